//! A real etcd (Debian's `etcd-server`) for the `etcd://` arbiter: its own
//! data directory, optionally inside a network namespace, killed on drop
//! and when the test process dies.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{in_netns, tempdir};

pub struct Etcd {
    child: Child,
    client: String,
    ns: Option<String>,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET /health` answered with `"health":"true"`.
fn healthy(client: &str) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&client.parse().expect("addr"), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {client}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"true\"")
}

impl Etcd {
    /// On loopback ports of this namespace.
    pub fn start() -> Etcd {
        // A port found free can be taken before etcd binds it (other
        // processes share this machine): then try other ports.
        for _ in 0..2 {
            match Self::try_spawn(None, "127.0.0.1", free_port()) {
                Ok(etcd) => return etcd,
                Err(log) if log.contains("address already in use") => {
                    eprintln!("etcd: a port was taken meanwhile; trying others")
                }
                Err(log) => panic!("{log}"),
            }
        }
        Self::spawn(None, "127.0.0.1", free_port())
    }

    /// Inside namespace `ns`, listening for clients on `ip:2379`.
    pub fn start_in(ns: &str, ip: &str) -> Etcd {
        Self::spawn(Some(ns), ip, 2379)
    }

    fn spawn(ns: Option<&str>, ip: &str, client_port: u16) -> Etcd {
        Self::try_spawn(ns, ip, client_port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A healthy etcd, or why not (with its log).
    fn try_spawn(ns: Option<&str>, ip: &str, client_port: u16) -> Result<Etcd, String> {
        match Command::new("etcd").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("`etcd --version` failed: {o:?}"),
            Err(e) => panic!(
                "the etcd binary is missing ({e}): install the Debian package etcd-server (scripts/test installs it)"
            ),
        }
        let dir = tempdir();
        let client = format!("{ip}:{client_port}");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = dir.path().join("etcd.log");
        let log_file = std::fs::File::create(&log).expect("etcd log");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        // SAFETY: runs in the forked child before exec and makes one
        // async-signal-safe call: etcd dies with this test process even if
        // `Drop` never runs.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("start etcd");
        let mut etcd = Etcd {
            child,
            client,
            ns: ns.map(str::to_string),
            _dir: dir,
            log,
        };
        etcd.wait_healthy(Duration::from_secs(30))?;
        Ok(etcd)
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "etcd exited ({status}) before it was healthy:\n{}",
                    self.log_text()
                ));
            }
            let client = self.client.clone();
            let ok = match &self.ns {
                Some(ns) => in_netns(ns, move || healthy(&client)),
                None => healthy(&client),
            };
            if ok {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` to etcd (SIGSTOP: an arbiter that accepts connections
    /// and never answers; SIGCONT ends the outage).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client_addr(&self) -> &str {
        &self.client
    }

    pub fn uri(&self, key: &str) -> String {
        format!("etcd://{}/{key}", self.client)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
