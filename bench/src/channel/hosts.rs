//! Where the two ends of a link run (network namespaces), and how they
//! meet: a handshake, accept with a deadline, connect.

use super::*;

/// Where one end of the link runs.
#[derive(Clone, Debug)]
pub enum Side {
    /// In the caller's network namespace.
    Current,
    /// In the network namespace of this file (`/var/run/netns/NAME`): every
    /// thread of the side joins it first (threads it starts inherit it).
    Netns(PathBuf),
}

impl Side {
    /// Runs `f` on a new thread of this side.
    pub fn spawn<T, F>(&self, name: &str, f: F) -> anyhow::Result<JoinHandle<anyhow::Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let side = self.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                side.enter()?;
                f()
            })
            .with_context(|| format!("starting thread {name}"))
    }

    /// Moves the calling thread into this side's namespace.
    fn enter(&self) -> anyhow::Result<()> {
        match self {
            Side::Current => Ok(()),
            Side::Netns(path) => {
                let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("joining network namespace {}", path.display()))
            }
        }
    }
}

/// The two ends of a link: A (the primary's side) connects to B (the
/// backup's side), which listens on `b_ip`.
#[derive(Clone, Debug)]
pub struct Hosts {
    pub a: Side,
    pub b: Side,
    pub b_ip: IpAddr,
}

impl Hosts {
    /// Both ends on this machine's loopback, in the caller's namespace.
    pub fn loopback() -> Hosts {
        Hosts {
            a: Side::Current,
            b: Side::Current,
            b_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Runs `a` on a thread of side A and `b` on a thread of side B: `b`
    /// gets a listener on `b_ip` (port chosen by the kernel) whose address
    /// `a` gets, and a [`Handshake`] end each to start timing together.
    pub(super) fn run<TA, TB, FA, FB>(&self, what: &str, a: FA, b: FB) -> anyhow::Result<(TA, TB)>
    where
        TA: Send + 'static,
        TB: Send + 'static,
        FA: FnOnce(SocketAddr, Handshake) -> anyhow::Result<TA> + Send + 'static,
        FB: FnOnce(TcpListener, Handshake) -> anyhow::Result<TB> + Send + 'static,
    {
        let (to_a, a_gets) = mpsc::channel::<SocketAddr>();
        let (ha, hb) = Handshake::pair();
        let b_ip = self.b_ip;
        let tb = self.b.spawn(&format!("{what}-b"), move || {
            let l = TcpListener::bind(SocketAddr::new(b_ip, 0))
                .with_context(|| format!("listening on {b_ip}"))?;
            let addr = l.local_addr().context("listener address")?;
            to_a.send(addr)
                .map_err(|_| anyhow!("side A is gone before it connected"))?;
            b(l, hb)
        })?;
        let ta = self.a.spawn(&format!("{what}-a"), move || {
            let addr = a_gets
                .recv_timeout(SETUP_TIMEOUT)
                .map_err(|_| anyhow!("side B did not listen"))?;
            a(addr, ha)
        })?;
        let ra = join(ta, "side A");
        let rb = join(tb, "side B");
        match (ra, rb) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            // The side that failed first is usually the one to blame; the
            // other one typically reports the connection it lost.
            (Err(ea), Err(eb)) => Err(anyhow!("side A: {ea:#}; side B: {eb:#}")),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }
}

/// "I am ready" one way, and "so am I" back: both sides start timing only
/// when both are set up. Either end dropped means the other side failed.
pub struct Handshake {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

impl Handshake {
    fn pair() -> (Handshake, Handshake) {
        let (t1, r1) = mpsc::channel();
        let (t2, r2) = mpsc::channel();
        (Handshake { tx: t1, rx: r2 }, Handshake { tx: t2, rx: r1 })
    }

    /// Says ready and waits until the peer has said so.
    pub fn ready(&self) -> anyhow::Result<()> {
        self.tx
            .send(())
            .map_err(|_| anyhow!("the other side failed during setup"))?;
        self.rx
            .recv_timeout(SETUP_TIMEOUT)
            .map_err(|_| anyhow!("the other side failed during setup"))
    }
}

/// Accepts one connection, giving up after [`SETUP_TIMEOUT`].
pub fn accept(l: &TcpListener) -> anyhow::Result<TcpStream> {
    l.set_nonblocking(true).context("listener nonblocking")?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).context("socket blocking")?;
                s.set_nodelay(true).context("TCP_NODELAY")?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("nobody connected within {SETUP_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// Connects with `TCP_NODELAY`.
pub fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    Ok(s)
}
