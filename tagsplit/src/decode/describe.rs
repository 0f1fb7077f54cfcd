//! One KD packet as a dissector shows it: typed detail and a one-line summary.

use serde::Serialize;
use tagsplit_protocol::kd::payload::{
    ControlReport, GET_STRING_API, LoadSymbols64, MANIPULATE_UNION_LEN, PRINT_STRING_API,
};
use tagsplit_protocol::kd::{Leader, ManipulateApi, Payload, Repr, StateChangeKind};

/// The decoded content of a KD packet.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Detail {
    /// ACK, RESEND or RESET: the header says it all.
    Control,
    /// `DBGKD_MANIPULATE_STATE64`.
    Manipulate {
        /// API name.
        api: String,
        /// `ApiNumber`.
        api_number: u32,
        /// `Processor`.
        processor: u16,
        /// `ReturnStatus`.
        return_status: u32,
        /// The typed union.
        fields: ManipulateApi,
        /// Bytes of message data.
        data_len: usize,
    },
    /// `DBGKD_ANY_WAIT_STATE_CHANGE`.
    StateChange {
        /// `NewState`.
        new_state: u32,
        /// `ProcessorLevel`.
        processor_level: u16,
        /// `Processor`.
        processor: u16,
        /// `NumberProcessors`.
        number_processors: u32,
        /// `Thread`.
        thread: u64,
        /// `ProgramCounter`.
        program_counter: u64,
        /// The typed union.
        fields: StateChangeKind,
        /// Image path (load symbols).
        path: Option<String>,
        /// The AMD64 control report.
        report: ControlReport,
    },
    /// `DBGKD_DEBUG_IO`.
    DebugIo {
        /// `ApiNumber`.
        api_number: u32,
        /// `Processor`.
        processor: u16,
        /// The string.
        text: String,
    },
    /// `DBGKD_FILE_IO`.
    FileIo {
        /// Operation.
        api: String,
        /// `ApiNumber`.
        api_number: u32,
        /// `Status`.
        status: u32,
        /// File name (CreateFile).
        file_name: Option<String>,
    },
    /// `DBGKD_TRACE_IO`.
    TraceIo {
        /// `ApiNumber`.
        api_number: u32,
        /// `LengthOfData`.
        length_of_data: u32,
    },
    /// `DBGKD_CONTROL_REQUEST`.
    ControlRequest {
        /// `ApiNumber`.
        api_number: u32,
        /// `ReturnStatus`.
        return_status: u32,
    },
    /// A data packet of another type.
    Raw {
        /// Payload length.
        len: usize,
    },
    /// The payload is too short for its type.
    Malformed {
        /// What is wrong.
        error: String,
    },
}

/// Decodes the payload of `repr`.
pub fn detail(repr: &Repr) -> Detail {
    if repr.leader == Leader::Control {
        return Detail::Control;
    }
    match Payload::parse(repr.packet_type, &repr.payload) {
        Err(e) => Detail::Malformed {
            error: e.to_string(),
        },
        Ok(Payload::Manipulate(m)) => Detail::Manipulate {
            api: m.api_number().name().to_string(),
            api_number: m.api_number().0,
            processor: m.processor(),
            return_status: m.return_status(),
            fields: m.api(),
            data_len: m.data().len(),
        },
        Ok(Payload::StateChange(s)) => {
            let fields = s.kind();
            let path = matches!(fields, StateChangeKind::LoadSymbols(_)).then(|| s.path());
            Detail::StateChange {
                new_state: s.new_state(),
                processor_level: s.processor_level(),
                processor: s.processor(),
                number_processors: s.number_processors(),
                thread: s.thread(),
                program_counter: s.program_counter(),
                fields,
                path,
                report: s.control_report(),
            }
        }
        Ok(Payload::DebugIo(d)) => Detail::DebugIo {
            api_number: d.api_number(),
            processor: d.processor(),
            text: d.text(),
        },
        Ok(Payload::FileIo(f)) => Detail::FileIo {
            api: f.api_name().to_string(),
            api_number: f.api_number(),
            status: f.status(),
            file_name: (f.api_number() == tagsplit_protocol::kd::payload::CREATE_FILE_API)
                .then(|| f.file_name()),
        },
        Ok(Payload::TraceIo(t)) => Detail::TraceIo {
            api_number: t.api_number(),
            length_of_data: t.length_of_data(),
        },
        Ok(Payload::ControlRequest(c)) => Detail::ControlRequest {
            api_number: c.api_number(),
            return_status: c.return_status(),
        },
        Ok(_) => Detail::Raw {
            len: repr.payload.len(),
        },
    }
}

/// The union fields of a manipulate packet, as ` name=value` pairs in declaration order
/// (the table the protocol crate parses and emits with; nothing is listed here again).
fn manipulate_fields(f: &ManipulateApi) -> String {
    let mut union = [0u8; MANIPULATE_UNION_LEN];
    f.emit_union(&mut union);
    ManipulateApi::union_fields(f.number())
        .iter()
        .filter_map(|field| Some(format!(" {}={:#x}", field.name, field.value(&union)?)))
        .collect()
}

fn load_symbols(l: &LoadSymbols64, path: Option<&str>) -> String {
    format!(
        "{} {:?} base={:#x} size={:#x} checksum={:#x}",
        if l.unload_symbols != 0 {
            "UnloadSymbols"
        } else {
            "LoadSymbols"
        },
        path.unwrap_or(""),
        l.base_of_dll,
        l.size_of_image,
        l.checksum
    )
}

/// The one-line summary of a packet.
pub fn summary(repr: &Repr, detail: &Detail) -> String {
    let head = format!(
        "{} id={:#010x} len={}",
        repr.packet_type.name(),
        repr.id,
        repr.payload.len()
    );
    let rest = match detail {
        Detail::Control => String::new(),
        Detail::Manipulate {
            api,
            api_number,
            return_status,
            fields,
            data_len,
            ..
        } => format!(
            "{api}({api_number:#x}) status={return_status:#x}{} data={data_len}",
            manipulate_fields(fields)
        ),
        Detail::StateChange {
            processor,
            number_processors,
            program_counter,
            fields,
            path,
            ..
        } => {
            let what = match fields {
                StateChangeKind::Exception(e) => format!(
                    "Exception code={:#x} address={:#x} first_chance={}",
                    e.code, e.address, e.first_chance
                ),
                StateChangeKind::LoadSymbols(l) => load_symbols(l, path.as_deref()),
                StateChangeKind::CommandString { flags } => {
                    format!("CommandString flags={flags:#x}")
                }
                StateChangeKind::Unknown(v) => format!("NewState={v:#x}"),
                _ => String::from("?"),
            };
            format!("{what} pc={program_counter:#x} cpu={processor}/{number_processors}")
        }
        Detail::DebugIo {
            api_number, text, ..
        } => match *api_number {
            PRINT_STRING_API => format!("PrintString {text:?}"),
            GET_STRING_API => format!("GetString prompt={text:?}"),
            other => format!("DebugIo api={other:#x}"),
        },
        Detail::FileIo {
            api,
            status,
            file_name,
            ..
        } => match file_name {
            Some(name) => format!("{api} {name:?} status={status:#x}"),
            None => format!("{api} status={status:#x}"),
        },
        Detail::TraceIo {
            api_number,
            length_of_data,
        } => format!("TraceIo api={api_number:#x} len={length_of_data}"),
        Detail::ControlRequest {
            api_number,
            return_status,
        } => format!("ControlRequest api={api_number:#x} status={return_status:#x}"),
        Detail::Raw { len } => format!("{len} raw bytes"),
        Detail::Malformed { error } => format!("malformed: {error}"),
    };
    if rest.is_empty() {
        head
    } else {
        format!("{head} {rest}")
    }
}
