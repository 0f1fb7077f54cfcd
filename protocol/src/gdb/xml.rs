//! The XML documents a stub serves through `qXfer`: the x86-64 target description, the
//! library list and the memory map; plus a small reader for the library list and the memory
//! map (the client side needs them back).
//!
//! The target description lists every register explicitly (features
//! `org.gnu.gdb.i386.core` and `org.gnu.gdb.i386.sse`), which fixes the `g` layout at
//! [`G_PACKET_LEN`] = 536 bytes regardless of the client's built-in defaults. It carries no
//! `<osabi>`: gdb 13.1 rejects a description with `<osabi>Windows</osabi>` and falls back
//! to i386, whose 312-byte `g` then does not match.

use std::fmt::Write as _;

pub use crate::stub::{Library, MemoryRegion};

/// One register of the target description, in `g` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterDef {
    /// gdb's name.
    pub name: &'static str,
    /// Width in bits.
    pub bitsize: u32,
    /// gdb type name.
    pub ty: &'static str,
    /// Which feature it belongs to.
    pub feature: &'static str,
}

const CORE: &str = "org.gnu.gdb.i386.core";
const SSE: &str = "org.gnu.gdb.i386.sse";

macro_rules! regs {
    ($($name:literal $bits:literal $ty:literal $feat:ident),* $(,)?) => {
        &[$(RegisterDef { name: $name, bitsize: $bits, ty: $ty, feature: $feat }),*]
    };
}

/// The x86-64 registers in `g` packet order (gdb's amd64 numbering 0..=56).
pub const X86_64_REGISTERS: &[RegisterDef] = regs![
    "rax" 64 "int64" CORE, "rbx" 64 "int64" CORE, "rcx" 64 "int64" CORE, "rdx" 64 "int64" CORE,
    "rsi" 64 "int64" CORE, "rdi" 64 "int64" CORE, "rbp" 64 "data_ptr" CORE, "rsp" 64 "data_ptr" CORE,
    "r8" 64 "int64" CORE, "r9" 64 "int64" CORE, "r10" 64 "int64" CORE, "r11" 64 "int64" CORE,
    "r12" 64 "int64" CORE, "r13" 64 "int64" CORE, "r14" 64 "int64" CORE, "r15" 64 "int64" CORE,
    "rip" 64 "code_ptr" CORE, "eflags" 32 "int32" CORE,
    "cs" 32 "int32" CORE, "ss" 32 "int32" CORE, "ds" 32 "int32" CORE, "es" 32 "int32" CORE,
    "fs" 32 "int32" CORE, "gs" 32 "int32" CORE,
    "st0" 80 "i387_ext" CORE, "st1" 80 "i387_ext" CORE, "st2" 80 "i387_ext" CORE, "st3" 80 "i387_ext" CORE,
    "st4" 80 "i387_ext" CORE, "st5" 80 "i387_ext" CORE, "st6" 80 "i387_ext" CORE, "st7" 80 "i387_ext" CORE,
    "fctrl" 32 "int" CORE, "fstat" 32 "int" CORE, "ftag" 32 "int" CORE, "fiseg" 32 "int" CORE,
    "fioff" 32 "int" CORE, "foseg" 32 "int" CORE, "fooff" 32 "int" CORE, "fop" 32 "int" CORE,
    "xmm0" 128 "vec128" SSE, "xmm1" 128 "vec128" SSE, "xmm2" 128 "vec128" SSE, "xmm3" 128 "vec128" SSE,
    "xmm4" 128 "vec128" SSE, "xmm5" 128 "vec128" SSE, "xmm6" 128 "vec128" SSE, "xmm7" 128 "vec128" SSE,
    "xmm8" 128 "vec128" SSE, "xmm9" 128 "vec128" SSE, "xmm10" 128 "vec128" SSE, "xmm11" 128 "vec128" SSE,
    "xmm12" 128 "vec128" SSE, "xmm13" 128 "vec128" SSE, "xmm14" 128 "vec128" SSE, "xmm15" 128 "vec128" SSE,
    "mxcsr" 32 "int" SSE,
];

/// The length of the `g` reply for [`X86_64_REGISTERS`] in bytes (536).
pub const G_PACKET_LEN: usize = 536;

/// The register number of `rip` in [`X86_64_REGISTERS`].
pub const REG_RIP: usize = 16;

/// Byte offset and width of register `index` in the `g` block.
pub fn register_span(index: usize) -> Option<(usize, usize)> {
    let mut offset = 0usize;
    for (i, r) in X86_64_REGISTERS.iter().enumerate() {
        let width = (r.bitsize / 8) as usize;
        if i == index {
            return Some((offset, width));
        }
        offset += width;
    }
    None
}

/// Escapes text for use in XML attribute values and character data.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`] (and decimal/hex character references).
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(rest.get(..pos).unwrap_or_default());
        let tail = rest.get(pos..).unwrap_or_default();
        let Some(end) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = tail.get(1..end).unwrap_or_default();
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(tail.get(..=end).unwrap_or_default()),
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// The x86-64 target description (`target.xml`).
pub fn target_description_x86_64() -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\"><target version=\"1.0\">\
         <architecture>i386:x86-64</architecture>",
    );
    for feature in [CORE, SSE] {
        let _ = write!(xml, "<feature name=\"{feature}\">");
        if feature == SSE {
            xml.push_str(
                "<vector id=\"v4f\" type=\"ieee_single\" count=\"4\"/>\
                 <vector id=\"v2d\" type=\"ieee_double\" count=\"2\"/>\
                 <vector id=\"v16i8\" type=\"int8\" count=\"16\"/>\
                 <vector id=\"v8i16\" type=\"int16\" count=\"8\"/>\
                 <vector id=\"v4i32\" type=\"int32\" count=\"4\"/>\
                 <vector id=\"v2i64\" type=\"int64\" count=\"2\"/>\
                 <union id=\"vec128\"><field name=\"v4_float\" type=\"v4f\"/>\
                 <field name=\"v2_double\" type=\"v2d\"/><field name=\"v16_int8\" type=\"v16i8\"/>\
                 <field name=\"v8_int16\" type=\"v8i16\"/><field name=\"v4_int32\" type=\"v4i32\"/>\
                 <field name=\"v2_int64\" type=\"v2i64\"/><field name=\"uint128\" type=\"uint128\"/>\
                 </union>",
            );
        }
        for (num, r) in X86_64_REGISTERS
            .iter()
            .enumerate()
            .filter(|(_, r)| r.feature == feature)
        {
            let _ = write!(
                xml,
                "<reg name=\"{}\" bitsize=\"{}\" type=\"{}\" regnum=\"{num}\"/>",
                r.name, r.bitsize, r.ty
            );
        }
        xml.push_str("</feature>");
    }
    xml.push_str("</target>");
    xml
}

/// The library list (`qXfer:libraries:read`): `<library name><segment address/></library>`.
pub fn library_list(libraries: &[Library]) -> String {
    let mut xml = String::from("<library-list>");
    for lib in libraries {
        let _ = write!(
            xml,
            "<library name=\"{}\"><segment address=\"{:#x}\"/></library>",
            escape(&lib.name),
            lib.address
        );
    }
    xml.push_str("</library-list>");
    xml
}

/// A library's name as a GDB stub lists it: a Windows path (`\SystemRoot\system32\x.sys`,
/// `\??\C:\…`) with `/` for each `\`. gdb fetches a library from the target
/// (`set sysroot target:`, its default) only when its name is an absolute path in the
/// target's file-system kind; a gdb without a Windows OS ABI (Debian's gdb 13 has none)
/// takes the target for a Unix one, reads `\SystemRoot\…` as a relative *host* path and
/// never asks for it, while `/SystemRoot/…` is absolute for every gdb.
pub fn gdb_library_name(name: &str) -> String {
    name.replace('\\', "/")
}

/// The reverse of [`gdb_library_name`] for a name read from a library list: one that
/// starts with `/` and has no `\` gets `\` back for each `/`; any other is kept.
pub fn windows_library_name(name: &str) -> String {
    if name.starts_with('/') && !name.contains('\\') {
        name.replace('/', "\\")
    } else {
        name.to_owned()
    }
}

/// The memory map (`qXfer:memory-map:read`), every region as `ram`.
pub fn memory_map(regions: &[MemoryRegion]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\"?><!DOCTYPE memory-map PUBLIC \"+//IDN gnu.org//DTD GDB Memory Map V1.0//EN\" \
         \"http://sourceware.org/gdb/gdb-memory-map.dtd\"><memory-map>",
    );
    for r in regions {
        let _ = write!(
            xml,
            "<memory type=\"ram\" start=\"{:#x}\" length=\"{:#x}\"/>",
            r.start, r.length
        );
    }
    xml.push_str("</memory-map>");
    xml
}

/// Iterates over the start tags named `element` in `xml`, yielding their attribute text.
fn start_tags<'a>(xml: &'a str, element: &str) -> impl Iterator<Item = &'a str> + 'a {
    let open = format!("<{element}");
    let olen = open.len();
    xml.match_indices(open.as_str())
        .filter_map(|(pos, _)| {
            let after = xml.get(pos + olen..)?;
            // `<library` must not match `<library-list`.
            if !after.starts_with([' ', '\t', '\n', '\r', '/', '>']) {
                return None;
            }
            let end = after.find('>')?;
            after.get(..end)
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// The value of attribute `name` in a start tag's attribute text.
fn attribute(attrs: &str, name: &str) -> Option<String> {
    let mut rest = attrs;
    loop {
        let pos = rest.find(name)?;
        let before_ok = pos == 0
            || rest
                .get(..pos)
                .is_some_and(|b| b.ends_with(char::is_whitespace));
        let after = rest.get(pos + name.len()..)?.trim_start();
        if before_ok && let Some(v) = after.strip_prefix('=') {
            let v = v.trim_start();
            let quote = v.chars().next().filter(|q| *q == '"' || *q == '\'')?;
            let body = v.get(1..)?;
            let end = body.find(quote)?;
            return Some(unescape(body.get(..end)?));
        }
        rest = rest.get(pos + name.len()..)?;
    }
}

fn parse_addr(text: &str) -> Option<u64> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

/// Reads a library list back: each library with the address of its first segment or
/// section. Libraries without an address are skipped.
pub fn parse_library_list(xml: &str) -> Vec<Library> {
    let mut out = Vec::new();
    // Split at each <library start so its first segment belongs to it.
    for piece in xml.split("<library ").skip(1) {
        let head_end = piece.find('>').unwrap_or(piece.len());
        let Some(name) = attribute(piece.get(..head_end).unwrap_or_default(), "name") else {
            continue;
        };
        let body = piece.get(head_end..).unwrap_or_default();
        let address = start_tags(body, "segment")
            .chain(start_tags(body, "section"))
            .find_map(|attrs| attribute(attrs, "address").as_deref().and_then(parse_addr));
        if let Some(address) = address {
            out.push(Library {
                name,
                address,
                size: 0,
            });
        }
    }
    out
}

/// The registers a target description names, in order, with their numbers as `p` and
/// `P` take them: a `<reg>` without `regnum` follows the one before it (the first, when
/// it has none, is `first`: 0 in the top file, or where the file before left off).
/// Includes are not followed (see [`target_includes`]).
pub fn target_registers(xml: &str, first: u32) -> Vec<(String, u32)> {
    let mut next = first;
    start_tags(xml, "reg")
        .filter_map(|attrs| {
            let name = attribute(attrs, "name")?;
            let num = attribute(attrs, "regnum")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(next);
            next = num.saturating_add(1);
            Some((name, num))
        })
        .collect()
}

/// The files a target description includes (`<xi:include href="…"/>`), in order.
pub fn target_includes(xml: &str) -> Vec<String> {
    start_tags(xml, "xi:include")
        .filter_map(|attrs| attribute(attrs, "href"))
        .collect()
}

/// Reads a memory map back.
pub fn parse_memory_map(xml: &str) -> Vec<MemoryRegion> {
    start_tags(xml, "memory")
        .filter_map(|attrs| {
            Some(MemoryRegion {
                start: parse_addr(&attribute(attrs, "start")?)?,
                length: parse_addr(&attribute(attrs, "length")?)?,
            })
        })
        .collect()
}

/// Returns the `[offset, offset + length)` window of `document` for a `qXfer` read, and
/// whether more follows.
pub fn xfer_window(document: &[u8], offset: u64, length: u64) -> (&[u8], bool) {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(document.len());
    let len = usize::try_from(length).unwrap_or(usize::MAX);
    let end = start.saturating_add(len).min(document.len());
    (
        document.get(start..end).unwrap_or_default(),
        end < document.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_layout_is_536_bytes_with_mxcsr_at_532() {
        let total: u32 = X86_64_REGISTERS.iter().map(|r| r.bitsize / 8).sum();
        assert_eq!(total as usize, G_PACKET_LEN);
        assert_eq!(X86_64_REGISTERS.len(), 57);
        assert_eq!(register_span(56), Some((532, 4)));
        assert_eq!(register_span(REG_RIP), Some((128, 8)));
        assert_eq!(register_span(57), None);
    }

    #[test]
    fn target_description_has_explicit_regs_and_no_osabi() {
        let xml = target_description_x86_64();
        assert!(xml.contains("<architecture>i386:x86-64</architecture>"));
        assert!(!xml.contains("osabi"));
        assert_eq!(xml.matches("<reg ").count(), 57);
        assert!(xml.contains("<feature name=\"org.gnu.gdb.i386.sse\">"));
        assert!(xml.contains("<reg name=\"mxcsr\" bitsize=\"32\" type=\"int\" regnum=\"56\"/>"));
    }

    #[test]
    fn library_list_round_trip_with_escaping() {
        let libs = vec![
            Library {
                name: r"\SystemRoot\system32\ntoskrnl.exe".into(),
                address: 0xfffff800_00000000,
                size: 0,
            },
            Library {
                name: "a&b<\"c\">.sys".into(),
                address: 0x1000,
                size: 0,
            },
        ];
        let xml = library_list(&libs);
        assert!(xml.contains("a&amp;b&lt;&quot;c&quot;&gt;.sys"));
        assert!(xml.contains("address=\"0xfffff80000000000\""));
        assert_eq!(parse_library_list(&xml), libs);
    }

    #[test]
    fn parses_the_transcript_library_list() {
        let xml = r#"<library-list><library name="C:\x5cWindows\x5cSystem32\x5cntdll.dll"><segment address="0x7ffa12341000"/></library><library name="k"><section address="0x10"/></library></library-list>"#;
        let libs = parse_library_list(xml);
        assert_eq!(libs.len(), 2);
        assert_eq!(libs[0].address, 0x7ffa_1234_1000);
        assert_eq!(
            libs[1],
            Library {
                name: "k".into(),
                address: 0x10,
                size: 0
            }
        );
    }

    #[test]
    fn library_names_for_gdb_and_back() {
        let name = r"\??\C:\Windows\system32\drivers\myfault.sys";
        let listed = gdb_library_name(name);
        assert_eq!(listed, "/??/C:/Windows/system32/drivers/myfault.sys");
        assert_eq!(windows_library_name(&listed), name);
        assert_eq!(windows_library_name(r"C:\x\y.dll"), r"C:\x\y.dll");
        assert_eq!(windows_library_name("k"), "k");
    }

    #[test]
    fn memory_map_round_trip() {
        let regions = vec![MemoryRegion {
            start: 0x1_4000_0000,
            length: 0x4000,
        }];
        let xml = memory_map(&regions);
        assert!(xml.contains("<memory type=\"ram\" start=\"0x140000000\" length=\"0x4000\"/>"));
        assert_eq!(parse_memory_map(&xml), regions);
    }

    #[test]
    fn xfer_windows() {
        assert_eq!(xfer_window(b"abcdef", 0, 4), (&b"abcd"[..], true));
        assert_eq!(xfer_window(b"abcdef", 4, 4), (&b"ef"[..], false));
        assert_eq!(xfer_window(b"abcdef", 10, 4), (&b""[..], false));
        assert_eq!(
            xfer_window(b"abcdef", u64::MAX, u64::MAX),
            (&b""[..], false)
        );
    }

    #[test]
    fn register_numbers_follow_the_description_across_files() {
        let top = r#"<target><architecture>i386:x86-64</architecture>
            <xi:include href="a.xml"/><xi:include href='b.xml'/></target>"#;
        assert_eq!(target_includes(top), ["a.xml", "b.xml"]);
        assert!(target_registers(top, 0).is_empty());
        let a = r#"<feature><reg name="rax" bitsize="64"/><reg name="rbx" bitsize="64"/>
            <reg name="cr0" bitsize="64" regnum="40"/><reg name="cr2" bitsize="64"/></feature>"#;
        let regs = target_registers(a, 0);
        assert_eq!(
            regs,
            [("rax", 0), ("rbx", 1), ("cr0", 40), ("cr2", 41)].map(|(n, r)| (n.to_owned(), r))
        );
        let b = r#"<feature><reg name="efer" bitsize="64"/></feature>"#;
        assert_eq!(target_registers(b, 42), [("efer".to_owned(), 42)]);
    }
}
