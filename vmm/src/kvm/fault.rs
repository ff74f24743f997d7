//! Reports of guest faults: the ring-0 stub leaves a frame on its stack and
//! stops at `PORT_FAULT`; this turns the frame into a message an operator can
//! act on, with the faulting instruction decoded.

use std::fmt;

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

/// Everything known about one guest fault.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultReport {
    pub vector: u8,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub cr2: u64,
    /// The faulting instruction, decoded, if its bytes were readable.
    pub instruction: Option<String>,
    /// The bytes the decoder consumed.
    pub bytes: Vec<u8>,
}

/// Words the common stub leaves at RSP: saved RDX, saved RAX, vector,
/// error code, then the CPU's RIP, CS, RFLAGS, RSP, SS.
pub const FRAME_WORDS: usize = 9;

/// Builds a report from the stub's frame and CR2.
pub fn from_frame(frame: &[u64; FRAME_WORDS], cr2: u64) -> FaultReport {
    FaultReport {
        vector: frame[2] as u8,
        error_code: frame[3],
        rip: frame[4],
        cs: frame[5],
        rflags: frame[6],
        rsp: frame[7],
        cr2,
        instruction: None,
        bytes: Vec::new(),
    }
}

impl FaultReport {
    /// Decodes the instruction at RIP from up to 15 bytes of guest memory.
    pub fn decode(&mut self, code: &[u8]) {
        if code.is_empty() {
            return;
        }
        let mut decoder = Decoder::with_ip(64, code, self.rip, DecoderOptions::NONE);
        let mut insn = Instruction::default();
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            self.instruction = Some("(undecodable bytes)".into());
            self.bytes = code[..code.len().min(8)].to_vec();
            return;
        }
        let mut text = String::new();
        IntelFormatter::new().format(&insn, &mut text);
        self.bytes = code[..insn.len()].to_vec();
        self.instruction = Some(text);
    }

    pub fn ring(&self) -> u64 {
        self.cs & 3
    }
}

/// Mnemonic and name of an exception vector.
pub fn vector_name(vector: u8) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        21 => ("#CP", "control protection"),
        255 => ("INT", "interrupt or `int n` (the guest has no interrupts)"),
        _ => ("#??", "reserved vector"),
    }
}

fn page_fault_detail(code: u64) -> String {
    let mut parts = vec![
        if code & 1 != 0 {
            "protection"
        } else {
            "not present"
        },
        if code & 2 != 0 { "write" } else { "read" },
        if code & 4 != 0 { "user" } else { "supervisor" },
    ];
    if code & 16 != 0 {
        parts.push("instruction fetch");
    }
    parts.join(", ")
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mnemonic, name) = vector_name(self.vector);
        write!(
            f,
            "guest fault {mnemonic} ({name}, vector {}) at rip {:#x} (ring {})",
            self.vector,
            self.rip,
            self.ring()
        )?;
        if self.vector == 14 {
            write!(
                f,
                ", address {:#x} ({})",
                self.cr2,
                page_fault_detail(self.error_code)
            )?;
        } else if self.error_code != 0 {
            write!(f, ", error code {:#x}", self.error_code)?;
        }
        match &self.instruction {
            Some(text) => {
                let hex: Vec<String> = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
                write!(f, ": `{text}` ({})", hex.join(" "))?;
            }
            None => write!(f, ": instruction not readable")?,
        }
        write!(f, "; rsp {:#x}, rflags {:#x}", self.rsp, self.rflags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_divide_error_is_reported_with_its_instruction() {
        let frame = [0xd, 0xa, 0, 0, 0x20_1000, 0x2b, 0x202, 0x7f_fff8, 0x23];
        let mut report = from_frame(&frame, 0);
        report.decode(&[0xf7, 0xf1, 0x90, 0x90]); // div ecx
        let text = report.to_string();
        assert!(text.contains("#DE (divide error, vector 0)"), "{text}");
        assert!(text.contains("rip 0x201000 (ring 3)"), "{text}");
        assert!(text.contains("`div ecx` (f7 f1)"), "{text}");
    }

    #[test]
    fn a_page_fault_names_the_address_and_access() {
        let frame = [0, 0, 14, 6, 0x20_2000, 0x2b, 0x202, 0x7f_fff8, 0x23];
        let mut report = from_frame(&frame, 0x10);
        report.decode(&[0x48, 0x89, 0x18]); // mov [rax], rbx
        let text = report.to_string();
        assert!(text.contains("#PF (page fault, vector 14)"), "{text}");
        assert!(
            text.contains("address 0x10 (not present, write, user)"),
            "{text}"
        );
        assert!(
            text.contains("mov [rax],rbx") || text.contains("mov qword ptr [rax],rbx"),
            "{text}"
        );
    }

    #[test]
    fn garbage_bytes_do_not_panic() {
        let mut report = from_frame(&[0, 0, 6, 0, 0x20_0000, 0x2b, 0, 0, 0], 0);
        report.decode(&[0x0f, 0xff]);
        assert!(report.instruction.is_some());
        report.decode(&[]);
        assert!(report.to_string().contains("#UD"));
    }
}
