//! Packet captures on a test host's link: `tcpdump` in the host's
//! namespace writing a pcap file, and the few bits of pcap parsing the
//! tests need (UDP payloads; raw bytes for a search).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::*;

/// A running `tcpdump`; stopped (SIGINT, then waited for) by `finish` or
/// on drop.
pub struct Capture {
    child: Option<Child>,
    pub file: PathBuf,
}

impl Capture {
    /// Captures what passes `iface` in host `host` ("a", "b") and matches
    /// `filter`, into `file`; returns once tcpdump listens.
    pub fn start(net: &Net, host: &str, iface: &str, filter: &str, file: &Path) -> Capture {
        let log = file.with_extension("log");
        let child = net
            .cmd(host, "tcpdump")
            // -Z root: the capture file is written in the test's private directory.
            .args([
                "--immediate-mode",
                "-Z",
                "root",
                "-i",
                iface,
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .args(filter.split_whitespace())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("tcpdump log"))
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        wait_for(Duration::from_secs(10), "tcpdump to listen", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on"))
        });
        Capture {
            child: Some(child),
            file: file.to_path_buf(),
        }
    }

    /// Stops the capture and returns the pcap file's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.stop();
        std::fs::read(&self.file).expect("pcap file")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The payloads of the UDP datagrams in an Ethernet pcap file.
pub fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let frame = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        out.push(ip[ihl + 8..].to_vec());
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
