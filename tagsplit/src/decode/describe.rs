//! One KD packet as a dissector shows it: typed detail and a one-line summary.

use serde::Serialize;
use tagsplit_protocol::kd::payload::{
    ControlReport, GET_STRING_API, LoadSymbols64, PRINT_STRING_API,
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

fn memory(prefix: &str, t: &tagsplit_protocol::kd::MemoryTransfer) -> String {
    format!(
        "{prefix} address={:#x} count={:#x} actual={:#x}",
        t.address, t.count, t.actual
    )
}

fn manipulate_fields(f: &ManipulateApi) -> String {
    use ManipulateApi as M;
    match f {
        M::ReadVirtualMemory(t)
        | M::WriteVirtualMemory(t)
        | M::ReadPhysicalMemory(t)
        | M::WritePhysicalMemory(t) => memory("", t),
        M::ReadControlSpace(t) | M::WriteControlSpace(t) => memory(" selector", t),
        M::GetContext { .. } => String::new(),
        M::SetContext { context_flags } => format!(" flags={context_flags:#x}"),
        M::WriteBreakPoint { address, handle } => {
            format!(" address={address:#x} handle={handle:#x}")
        }
        M::RestoreBreakPoint { handle } => format!(" handle={handle:#x}"),
        M::Continue { status } => format!(" continue={status:#x}"),
        M::Continue2 {
            status,
            trace_flag,
            dr7,
            ..
        } => format!(" continue={status:#x} trace={trace_flag} dr7={dr7:#x}"),
        M::ReadIoSpace {
            address,
            size,
            value,
        }
        | M::WriteIoSpace {
            address,
            size,
            value,
        } => format!(" port={address:#x} size={size} value={value:#x}"),
        M::GetVersion(v) => format!(
            " major={:#06x} minor={} protocol={}/{} flags={:#06x} machine={:#06x} max_packet={} max_state={:#x} max_manip={:#x} kernbase={:#x} psloadedmodulelist={:#x} debuggerdatalist={:#x}",
            v.major_version,
            v.minor_version,
            v.protocol_version,
            v.kd_secondary_version,
            v.flags,
            v.machine_type,
            v.max_packet_type,
            v.max_state_change,
            v.max_manipulate,
            v.kern_base,
            v.ps_loaded_module_list,
            v.debugger_data_list
        ),
        M::ReadMsr { msr, low, high } | M::WriteMsr { msr, low, high } => {
            format!(" msr={msr:#x} value={high:#x}:{low:#08x}")
        }
        M::SearchMemory {
            address,
            length,
            pattern_length,
        } => format!(" address={address:#x} length={length:#x} pattern_len={pattern_length}"),
        M::GetContextEx {
            offset,
            byte_count,
            bytes_copied,
        }
        | M::SetContextEx {
            offset,
            byte_count,
            bytes_copied,
        } => format!(" offset={offset:#x} count={byte_count:#x} copied={bytes_copied:#x}"),
        _ => String::new(),
    }
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
