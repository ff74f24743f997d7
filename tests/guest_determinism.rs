//! The determinism guard: the guest binary must not contain instructions
//! whose results this host does not control (CPUID, RDTSC, RDTSCP, RDRAND,
//! RDSEED, RDPID, XGETBV are not trapped at ring 3 here), nor HLT, nor port
//! I/O to a port the ABI does not define (docs/architecture.md,
//! docs/guest-abi.md).

mod common;

use std::process::Command;

use lockstep_guest_abi as abi;

const FORBIDDEN: [&str; 8] = [
    "cpuid", "rdtsc", "rdtscp", "rdrand", "rdseed", "rdpid", "xgetbv", "hlt",
];

struct Insn {
    addr: String,
    mnemonic: String,
    operands: String,
}

fn disassemble(elf: &[u8]) -> Vec<Insn> {
    let dir = common::tempdir();
    let path = dir.path().join("guest.elf");
    std::fs::write(&path, elf).expect("write guest");
    let out = common::run_ok(
        Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", "-M", "suffix"])
            .arg(&path),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "  2003c6:\tout    %eax,(%dx)"
            let (addr, rest) = line.split_once(":\t")?;
            let addr = addr.trim();
            if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            let rest = rest.split('#').next().unwrap_or("").trim();
            let mut parts = rest.splitn(2, char::is_whitespace);
            let mnemonic = parts.next()?.to_string();
            let operands = parts.next().unwrap_or("").trim().to_string();
            Some(Insn {
                addr: addr.to_string(),
                mnemonic,
                operands,
            })
        })
        .collect()
}

fn writes_dx(insn: &Insn) -> bool {
    let base = insn.mnemonic.trim_end_matches(['b', 'w', 'l', 'q']);
    if [
        "mul", "div", "idiv", "cqto", "cltd", "cwtd", "cqo", "cdq", "cwd",
    ]
    .contains(&base)
        || ["mulq", "mull", "divq", "divl", "idivq", "idivl"].contains(&insn.mnemonic.as_str())
        || (base == "imul" && !insn.operands.contains(','))
    {
        return true;
    }
    let dest = insn.operands.rsplit(',').next().unwrap_or("");
    matches!(dest, "%dx" | "%edx" | "%rdx" | "%dl" | "%dh")
}

/// The port of the `out` at index `i`, proven by the nearest earlier write
/// to DX being a move of an immediate.
fn port_of(insns: &[Insn], i: usize) -> Result<u16, String> {
    let ops = &insns[i].operands;
    if let Some(imm) = ops.split(',').nth(1).and_then(|p| p.strip_prefix("$0x")) {
        return u16::from_str_radix(imm, 16).map_err(|e| e.to_string());
    }
    for prev in insns[..i].iter().rev().take(400) {
        if writes_dx(prev) {
            let src = prev.operands.split(',').next().unwrap_or("");
            return match (prev.mnemonic.starts_with("mov"), src.strip_prefix("$0x")) {
                (true, Some(hex)) => u16::from_str_radix(hex, 16).map_err(|e| e.to_string()),
                _ => Err(format!(
                    "DX last set at {} by `{} {}`",
                    prev.addr, prev.mnemonic, prev.operands
                )),
            };
        }
    }
    Err("no write to DX found before it".into())
}

#[test]
fn the_guest_contains_no_untrapped_or_forbidden_instruction() {
    let elf = lockstep_vmm::EMBEDDED_GUEST;
    if elf.is_empty() {
        panic!("this build embeds no guest (LOCKSTEP_GUEST_ELF=none): build it to run this test");
    }
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([elf[16], elf[17]]),
        2,
        "ET_EXEC: a static executable"
    );
    let insns = disassemble(elf);
    assert!(
        insns.len() > 10_000,
        "disassembly looks empty ({} instructions)",
        insns.len()
    );
    let mut problems = Vec::new();
    let mut outs = 0;
    for (i, insn) in insns.iter().enumerate() {
        let m = insn.mnemonic.as_str();
        if FORBIDDEN.contains(&m) {
            problems.push(format!("{}: {m}", insn.addr));
        }
        // `in`/`ins*`: the ABI defines no port to read.
        if ["in", "inb", "inw", "inl", "insb", "insw", "insl"].contains(&m) {
            problems.push(format!(
                "{}: {m} {} (the ABI has no input port)",
                insn.addr, insn.operands
            ));
        }
        if ["outsb", "outsw", "outsl"].contains(&m) {
            problems.push(format!("{}: {m} (string port output)", insn.addr));
        }
        if ["out", "outb", "outw", "outl"].contains(&m) {
            outs += 1;
            match port_of(&insns, i) {
                Ok(port) if abi::GUEST_PORTS.contains(&port) => {}
                Ok(port) => problems.push(format!(
                    "{}: out to port {port:#x}, which the ABI does not define",
                    insn.addr
                )),
                Err(why) => problems.push(format!(
                    "{}: out to a port that cannot be proven ({why})",
                    insn.addr
                )),
            }
        }
    }
    assert!(outs > 0, "the guest makes no sync or console call at all?");
    assert!(
        problems.is_empty(),
        "the guest binary breaks the determinism contract:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_catches_what_it_must() {
    let dir = common::tempdir();
    let src = ".globl _start\n.text\n_start:\n  mov $0x510,%dx\n  out %eax,(%dx)\n  mov %rcx,%rdx\n  out %eax,(%dx)\n  out %al,$0x80\n  rdtsc\n  cpuid\n  xgetbv\n  hlt\n";
    let elf = common::asm_guest(dir.path(), "bad", Some(src));
    let insns = disassemble(&std::fs::read(elf).unwrap());
    let i_out: Vec<usize> = insns
        .iter()
        .enumerate()
        .filter(|(_, x)| x.mnemonic.starts_with("out"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(port_of(&insns, i_out[0]), Ok(abi::PORT_SYNC));
    assert!(
        port_of(&insns, i_out[1]).is_err(),
        "a port from a register cannot be proven"
    );
    assert_eq!(port_of(&insns, i_out[2]), Ok(0x80));
    let found: Vec<&str> = insns
        .iter()
        .map(|i| i.mnemonic.as_str())
        .filter(|m| FORBIDDEN.contains(m))
        .collect();
    assert_eq!(found, ["rdtsc", "cpuid", "xgetbv", "hlt"]);
}
