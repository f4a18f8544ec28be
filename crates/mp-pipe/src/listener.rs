use std::{
    net::{TcpListener, TcpStream},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream},
    },
    path::PathBuf,
    time::Duration,
};

use crate::{Address, Connection, Error, Result, ToAddress, conn::Transport, sys};

/// How long either side of a connection may take over the authentication handshake unless
/// told otherwise: a silent peer cannot stall `accept` or `connect` for longer.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A socket that accepts [`Connection`]s: Python's `multiprocessing.connection.Listener`.
///
/// With an authkey, every accepted peer must answer our challenge and we answer theirs
/// (CPython's handshake, both its legacy and its 3.12+ form), so CPython clients can connect.
/// [`set_legacy_md5(false)`](Self::set_legacy_md5) refuses the legacy HMAC-MD5 form.
///
/// ```
/// use multiprocessing::connection::{Client, Listener};
///
/// let mut listener = Listener::bind("127.0.0.1:0", Some(b"secret"))?;
/// let address = listener.address().clone();
/// let client = std::thread::spawn(move || -> multiprocessing::connection::Result<Vec<u8>> {
///     let conn = Client::connect(&address, Some(b"secret"))?;
///     conn.send_bytes(b"hello")?;
///     conn.recv_bytes()
/// });
/// let conn = listener.accept()?;
/// let hello = conn.recv_bytes()?;
/// conn.send_bytes(&hello)?;
/// assert_eq!(client.join().unwrap()?, b"hello");
/// # Ok::<(), multiprocessing::connection::Error>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    address: Address,
    authkey: Option<Vec<u8>>,
    last_accepted: Option<Address>,
    handshake_timeout: Duration,
    /// Whether a peer may use the legacy HMAC-MD5 handshake.
    legacy_md5: bool,
    /// The socket file we created, removed on drop.
    unlink: Option<PathBuf>,
}

#[derive(Debug)]
enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Listens at `address`: a unix path, an abstract name (`"\0name"` or `"@name"`) or TCP
    /// `host:port` (port 0 picks a free one; [`address`](Self::address) tells which).
    ///
    /// # Errors
    /// [`Error::BadAddress`], or [`Error::Socket`] — e.g. `EADDRINUSE` when the path exists.
    pub fn bind(address: impl ToAddress, authkey: Option<&[u8]>) -> Result<Self> {
        let requested = address.to_address()?;
        let failed = || Error::socket("bind", &requested);
        let (socket, address, unlink) = match requested.clone() {
            Address::Unix(path) => {
                let listener = UnixListener::bind(&path).map_err(failed())?;
                (
                    Socket::Unix(listener),
                    Address::Unix(path.clone()),
                    Some(path),
                )
            }
            Address::Abstract(name) => {
                let addr = UnixAddr::from_abstract_name(&name).map_err(failed())?;
                let listener = UnixListener::bind_addr(&addr).map_err(failed())?;
                (Socket::Unix(listener), Address::Abstract(name), None)
            }
            Address::Tcp(addr) => {
                let listener = TcpListener::bind(addr).map_err(failed())?;
                let bound = listener
                    .local_addr()
                    .map_err(|e| Error::os("getsockname", e))?;
                (Socket::Tcp(listener), Address::Tcp(bound), None)
            }
        };
        Ok(Listener {
            socket,
            address,
            authkey: authkey.map(<[u8]>::to_vec),
            last_accepted: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            legacy_md5: true,
            unlink,
        })
    }

    /// Listens at a fresh address of its own choosing, as Python's `Listener()` with no
    /// address does on Linux: an abstract unix name, `listener-<pid>-<n>`, which
    /// [`address`](Self::address) tells. An abstract name has no file, so nothing is left
    /// behind whatever becomes of the process; like any unix address on the machine, it is
    /// reachable by every local process, so give it an authkey unless any of them may talk to
    /// it.
    ///
    /// ```
    /// use multiprocessing::connection::{Client, Listener};
    ///
    /// let mut listener = Listener::bind_auto(Some(b"key"))?;
    /// let address = listener.address().clone();
    /// let client = std::thread::spawn(move || Client::connect(&address, Some(b"key")));
    /// listener.accept()?.send(&"hello")?;
    /// assert_eq!(client.join().unwrap()?.recv::<String>()?, "hello");
    /// # Ok::<(), multiprocessing::connection::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Socket`] when binding fails for another reason than a name in use (those
    /// are skipped).
    pub fn bind_auto(authkey: Option<&[u8]>) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("listener-{}-{n}", std::process::id());
            match Listener::bind(Address::Abstract(name.into_bytes()), authkey) {
                // Taken (by a process of the same pid in another pid namespace): next.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ADDRINUSE.raw_os_error()) => {
                }
                result => return result,
            }
        }
    }

    /// Where this listener listens (with the port filled in for TCP port 0).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The address of the last accepted peer, if it had one (unix clients usually do not).
    pub fn last_accepted(&self) -> Option<&Address> {
        self.last_accepted.as_ref()
    }

    /// How long an accepted peer may take over the authentication handshake.
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// Whether an accepted peer may authenticate with the legacy HMAC-MD5 handshake of
    /// CPython 3.11 and older (default `true`, as CPython 3.12 does). With `false` only the
    /// `{sha256}` (or stronger) form passes: an MD5 answer to our challenge, or an MD5
    /// challenge from the peer, fails the handshake with [`Error::Authentication`]. MD5 is
    /// broken as a hash; as an HMAC it still holds, so accepting it is a compatibility choice,
    /// and refusing it is for deployments with no old peers.
    ///
    /// ```
    /// use multiprocessing::connection::{Client, Listener};
    ///
    /// let mut listener = Listener::bind("127.0.0.1:0", Some(b"k"))?;
    /// listener.set_legacy_md5(false);
    /// let address = listener.address().clone();
    /// // Our own client answers a {sha256} challenge with SHA-256: welcome.
    /// let client = std::thread::spawn(move || Client::connect(&address, Some(b"k")));
    /// listener.accept()?;
    /// client.join().unwrap()?;
    /// # Ok::<(), multiprocessing::connection::Error>(())
    /// ```
    pub fn set_legacy_md5(&mut self, accept: bool) {
        self.legacy_md5 = accept;
    }

    /// Waits for a peer, then runs the authentication handshake if there is an authkey.
    ///
    /// # Errors
    /// [`Error::Authentication`] or [`Error::HandshakeTimeout`] for a peer that fails the
    /// handshake (the listener stays usable: call `accept` again), or [`Error::Os`].
    pub fn accept(&mut self) -> Result<Connection> {
        let (fd, transport, peer): (OwnedFd, _, _) = match &self.socket {
            Socket::Unix(listener) => {
                let (stream, addr) = listener.accept().map_err(|e| Error::os("accept", e))?;
                let peer = addr
                    .as_pathname()
                    .map(|p| Address::Unix(p.to_path_buf()))
                    .or_else(|| {
                        addr.as_abstract_name()
                            .map(|n| Address::Abstract(n.to_vec()))
                    });
                (stream.into(), Transport::Unix, peer)
            }
            Socket::Tcp(listener) => {
                let (stream, addr) = listener.accept().map_err(|e| Error::os("accept", e))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| Error::os("setsockopt(TCP_NODELAY)", e))?;
                (stream.into(), Transport::Tcp, Some(Address::Tcp(addr)))
            }
        };
        self.last_accepted = peer;
        let conn = Connection::new(fd, transport, true, true);
        if let Some(key) = &self.authkey {
            let md5 = self.legacy_md5;
            handshake(&conn, self.handshake_timeout, |conn, deadline| {
                crate::auth::deliver_challenge(conn, key, deadline, md5)?;
                crate::auth::answer_challenge(conn, key, deadline, md5)
            })?;
        }
        Ok(conn)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = self.unlink.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs `steps` within `timeout` as a whole: reads wait on a deadline, and writes (a few
/// hundred bytes, which a live socket takes at once) are bounded by a send timeout.
fn handshake(
    conn: &Connection,
    timeout: Duration,
    steps: impl FnOnce(&Connection, std::time::Instant) -> Result<()>,
) -> Result<()> {
    let timeout = timeout.max(Duration::from_micros(1));
    // (A ring's receives take the deadline themselves, and its sends of a few hundred bytes
    // never wait for room in a fresh ring.)
    if let Some(fd) = conn.socket_fd() {
        sys::set_io_timeout(fd, Some(timeout))?;
    }
    let deadline = std::time::Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(86_400 * 365));
    steps(conn, deadline)?;
    match conn.socket_fd() {
        Some(fd) => sys::set_io_timeout(fd, None),
        None => Ok(()),
    }
}

/// Connects to a [`Listener`]: Python's `multiprocessing.connection.Client`.
///
/// [`Client::connect`] does it with the defaults; a `Client` value holds options for
/// [`open`](Self::open), in the manner of `std::fs::OpenOptions`:
///
/// ```
/// use std::time::Duration;
/// use multiprocessing::connection::{Client, Listener};
///
/// let mut listener = Listener::bind("127.0.0.1:0", Some(b"k"))?;
/// let address = listener.address().clone();
/// let server = std::thread::spawn(move || listener.accept().map(drop));
/// let conn = Client::new()
///     .handshake_timeout(Duration::from_secs(5))
///     .legacy_md5(false) // a CPython 3.11 listener would be refused
///     .open(&address, Some(b"k"))?;
/// server.join().unwrap()?;
/// # drop(conn);
/// # Ok::<(), multiprocessing::connection::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    handshake_timeout: Duration,
    legacy_md5: bool,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// The defaults: a handshake within [`DEFAULT_HANDSHAKE_TIMEOUT`], legacy MD5 accepted.
    pub const fn new() -> Self {
        Client {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            legacy_md5: true,
        }
    }

    /// How long the listener may take over the authentication handshake.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether the listener may use the legacy HMAC-MD5 handshake of CPython 3.11 and older
    /// (default `true`, as CPython 3.12 does); see [`Listener::set_legacy_md5`].
    pub fn legacy_md5(&mut self, accept: bool) -> &mut Self {
        self.legacy_md5 = accept;
        self
    }

    /// Connects to `address` and, with an authkey, answers the listener's challenge and
    /// challenges it in turn, with these options.
    ///
    /// # Errors
    /// [`Error::Authentication`] on a key mismatch (on both sides) or a refused MD5
    /// handshake, [`Error::HandshakeTimeout`], [`Error::BadAddress`], or [`Error::Socket`] — e.g.
    /// `ECONNREFUSED`.
    pub fn open(&self, address: impl ToAddress, authkey: Option<&[u8]>) -> Result<Connection> {
        let requested = address.to_address()?;
        let failed = || Error::socket("connect", &requested);
        let conn = match requested.clone() {
            Address::Unix(path) => {
                let stream = UnixStream::connect(&path).map_err(failed())?;
                Connection::new(stream.into(), Transport::Unix, true, true)
            }
            Address::Abstract(name) => {
                let addr = UnixAddr::from_abstract_name(&name).map_err(failed())?;
                let stream = UnixStream::connect_addr(&addr).map_err(failed())?;
                Connection::new(stream.into(), Transport::Unix, true, true)
            }
            Address::Tcp(addr) => {
                let stream = TcpStream::connect(addr).map_err(failed())?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| Error::os("setsockopt(TCP_NODELAY)", e))?;
                Connection::new(stream.into(), Transport::Tcp, true, true)
            }
        };
        if let Some(key) = authkey {
            let md5 = self.legacy_md5;
            handshake(&conn, self.handshake_timeout, |conn, deadline| {
                crate::auth::answer_challenge(conn, key, deadline, md5)?;
                crate::auth::deliver_challenge(conn, key, deadline, md5)
            })?;
        }
        Ok(conn)
    }

    /// Connects to `address` and, with an authkey, answers the listener's challenge and
    /// challenges it in turn (within [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    ///
    /// # Errors
    /// [`Error::Authentication`] on a key mismatch (on both sides), [`Error::HandshakeTimeout`],
    /// [`Error::BadAddress`], or [`Error::Socket`] — e.g. `ECONNREFUSED`.
    pub fn connect(address: impl ToAddress, authkey: Option<&[u8]>) -> Result<Connection> {
        Client::new().open(address, authkey)
    }

    /// [`connect`](Self::connect) with a handshake deadline of your choosing.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub fn connect_with_timeout(
        address: impl ToAddress,
        authkey: Option<&[u8]>,
        handshake_timeout: Duration,
    ) -> Result<Connection> {
        Client::new()
            .handshake_timeout(handshake_timeout)
            .open(address, authkey)
    }
}

#[cfg(test)]
mod tests {
    use std::{thread, time::Duration};

    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mp-pipe-{}-{name}", std::process::id()))
    }

    #[test]
    fn connect_error_names_the_address_and_the_cause() {
        let path = temp_path("nobody-listens.sock");
        let err = Client::connect(path.to_str().unwrap(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "connect to {} failed: No such file or directory (os error 2)",
                path.display()
            )
        );
        assert_eq!(err.raw_os_error(), Some(2));
    }

    #[test]
    fn bind_error_names_the_address_and_the_cause() {
        let path = temp_path("bind-twice.sock");
        let first = Listener::bind(path.to_str().unwrap(), None).unwrap();
        let err = Listener::bind(path.to_str().unwrap(), None).unwrap_err();
        drop(first);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("bind to {} failed: ", path.display()))
                && msg.contains("(os error 98)"),
            "{msg}"
        );
    }

    #[test]
    fn unix_listener_unlinks_its_path_on_drop() {
        let path = temp_path("unlink.sock");
        let listener = Listener::bind(path.to_str().unwrap(), None).unwrap();
        assert!(path.exists());
        drop(listener);
        assert!(!path.exists());
    }

    #[test]
    fn abstract_names_connect_without_a_file() {
        let name = format!("@mp-pipe-test-{}", std::process::id());
        let mut listener = Listener::bind(name.as_str(), Some(b"k")).unwrap();
        let client = thread::spawn(move || {
            let conn = Client::connect(name.as_str(), Some(b"k")).unwrap();
            conn.send(&42u32).unwrap();
        });
        let conn = listener.accept().unwrap();
        assert_eq!(conn.recv::<u32>().unwrap(), 42);
        client.join().unwrap();
    }

    #[test]
    fn an_automatic_address_is_fresh_abstract_and_reachable() {
        let mut listener = Listener::bind_auto(Some(b"k")).unwrap();
        let other = Listener::bind_auto(None).unwrap();
        assert_ne!(listener.address(), other.address());
        assert!(
            matches!(listener.address(), Address::Abstract(name) if name.starts_with(b"listener-")),
            "{:?}",
            listener.address()
        );
        let address = listener.address().clone();
        let client = thread::spawn(move || {
            let conn = Client::connect(&address, Some(b"k")).unwrap();
            conn.send(&7u32).unwrap();
        });
        let conn = listener.accept().unwrap();
        assert_eq!(conn.recv::<u32>().unwrap(), 7);
        client.join().unwrap();
    }

    #[test]
    fn a_wrong_key_fails_on_both_sides_and_the_listener_carries_on() {
        let mut listener = Listener::bind("127.0.0.1:0", Some(b"right")).unwrap();
        let address = listener.address().clone();
        let client = thread::spawn(move || {
            let wrong = Client::connect(&address, Some(b"wrong"));
            let right = Client::connect(&address, Some(b"right")).map(|c| c.recv::<String>());
            (wrong.map(drop), right)
        });
        assert!(matches!(listener.accept(), Err(Error::Authentication(_))));
        let conn = listener.accept().unwrap();
        conn.send("welcome").unwrap();
        let (wrong, right) = client.join().unwrap();
        assert!(matches!(wrong, Err(Error::Authentication(_))), "{wrong:?}");
        assert_eq!(right.unwrap().unwrap(), "welcome");
    }

    #[test]
    fn a_silent_client_cannot_stall_accept() {
        let mut listener = Listener::bind("127.0.0.1:0", Some(b"k")).unwrap();
        listener.set_handshake_timeout(Duration::from_millis(100));
        let silent = TcpStream::connect(match listener.address() {
            Address::Tcp(a) => *a,
            _ => unreachable!(),
        })
        .unwrap();
        // The challenge goes out, no answer comes back: the deadline ends the wait.
        assert!(matches!(listener.accept(), Err(Error::HandshakeTimeout)));
        drop(silent);
    }

    /// CPython 3.11's handshake, step by step: 20-byte challenges, bare HMAC-MD5 answers.
    mod legacy {
        use hmac::{Hmac, KeyInit, Mac};

        use crate::{Connection, Error, Result};

        fn md5(key: &[u8], message: &[u8]) -> Vec<u8> {
            let mut mac = Hmac::<md5::Md5>::new_from_slice(key).unwrap();
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }

        fn refused(why: &str) -> Error {
            Error::Authentication(why.into())
        }

        pub(super) fn deliver(conn: &Connection, key: &[u8]) -> Result<()> {
            let challenge = [7u8; 20];
            conn.send_bytes(&[b"#CHALLENGE#".as_slice(), &challenge].concat())?;
            if conn.recv_bytes_max(256)? == md5(key, &challenge) {
                conn.send_bytes(b"#WELCOME#")
            } else {
                conn.send_bytes(b"#FAILURE#")?;
                Err(refused("digest received was wrong"))
            }
        }

        pub(super) fn answer(conn: &Connection, key: &[u8]) -> Result<()> {
            let message = conn.recv_bytes_max(256)?;
            let challenge = message.strip_prefix(b"#CHALLENGE#").unwrap();
            conn.send_bytes(&md5(key, challenge))?;
            match conn.recv_bytes_max(256)?.as_slice() {
                b"#WELCOME#" => Ok(()),
                _ => Err(refused("digest sent was rejected")),
            }
        }

        /// A 3.11 `Client(address, authkey=key)`.
        pub(super) fn client(address: std::net::SocketAddr, key: &[u8]) -> Result<()> {
            let stream = std::net::TcpStream::connect(address).unwrap();
            let conn = Connection::new(stream.into(), crate::conn::Transport::Tcp, true, true);
            answer(&conn, key)?;
            deliver(&conn, key)
        }

        /// A 3.11 `Listener(authkey=key).accept()`, for one client.
        pub(super) fn listener(listener: std::net::TcpListener, key: &[u8]) -> Result<()> {
            let (stream, _) = listener.accept().unwrap();
            let conn = Connection::new(stream.into(), crate::conn::Transport::Tcp, true, true);
            deliver(&conn, key)?;
            answer(&conn, key)
        }
    }

    fn tcp_address(listener: &Listener) -> std::net::SocketAddr {
        match listener.address() {
            Address::Tcp(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_listener_accepts_a_legacy_md5_client_by_default() {
        let mut listener = Listener::bind("127.0.0.1:0", Some(b"k")).unwrap();
        let address = tcp_address(&listener);
        let client = thread::spawn(move || legacy::client(address, b"k"));
        listener.accept().unwrap();
        client.join().unwrap().unwrap();
    }

    #[test]
    fn a_listener_refusing_md5_refuses_a_legacy_client_and_takes_a_modern_one() {
        let mut listener = Listener::bind("127.0.0.1:0", Some(b"k")).unwrap();
        listener.set_legacy_md5(false);
        let address = tcp_address(&listener);
        let clients = thread::spawn(move || {
            let legacy = legacy::client(address, b"k");
            let modern = Client::connect(address, Some(b"k")).map(drop);
            (legacy, modern)
        });
        let refused = listener.accept().unwrap_err();
        assert!(
            matches!(&refused, Error::Authentication(why) if why.contains("HMAC-MD5")),
            "{refused:?}"
        );
        listener.accept().unwrap();
        let (legacy, modern) = clients.join().unwrap();
        assert!(
            matches!(legacy, Err(Error::Authentication(_))),
            "{legacy:?}"
        );
        modern.unwrap();
    }

    #[test]
    fn a_client_refusing_md5_refuses_a_legacy_listener() {
        for refuse in [false, true] {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = socket.local_addr().unwrap();
            let server = thread::spawn(move || legacy::listener(socket, b"k"));
            let client = Client::new().legacy_md5(!refuse).open(address, Some(b"k"));
            let server = server.join().unwrap();
            if refuse {
                assert!(
                    matches!(&client, Err(Error::Authentication(why)) if why.contains("HMAC-MD5")),
                    "{client:?}"
                );
                // The 3.11 listener sees the connection close instead of an answer.
                assert!(server.is_err());
            } else {
                client.unwrap();
                server.unwrap();
            }
        }
    }

    #[test]
    fn fds_do_not_cross_tcp() {
        let mut listener = Listener::bind("127.0.0.1:0", None).unwrap();
        let address = listener.address().clone();
        let client = thread::spawn(move || Client::connect(&address, None).unwrap());
        let conn = listener.accept().unwrap();
        let _peer = client.join().unwrap();
        let (r, _w) = crate::pipe(false).unwrap();
        assert!(matches!(
            conn.send(&r),
            Err(Error::FdsNeedUnixSocket("TCP socket"))
        ));
        assert!(matches!(listener.last_accepted(), Some(Address::Tcp(_))));
    }
}

/// Challenges the peer of `conn` to prove it knows `authkey`: Python's
/// `multiprocessing.connection.deliver_challenge`, as a `Listener` with an authkey does to
/// each peer it accepts (then it answers theirs). The whole exchange must end within
/// `timeout`. Both forms of CPython's handshake are accepted: the `{sha256}` form of 3.12+
/// and the legacy HMAC-MD5 of 3.11.
///
/// ```
/// use std::time::Duration;
/// use multiprocessing::connection::{answer_challenge, deliver_challenge, pipe};
///
/// let (ours, theirs) = pipe(true)?;
/// let peer = std::thread::spawn(move || answer_challenge(&theirs, b"secret", Duration::from_secs(5)));
/// deliver_challenge(&ours, b"secret", Duration::from_secs(5))?;
/// peer.join().unwrap()?;
/// # Ok::<(), multiprocessing::connection::Error>(())
/// ```
///
/// # Errors
/// [`Error::Authentication`] if the peer's answer is wrong or malformed, or it closed the
/// connection; [`Error::HandshakeTimeout`]; [`Error::Os`].
pub fn deliver_challenge(conn: &Connection, authkey: &[u8], timeout: Duration) -> Result<()> {
    handshake(conn, timeout, |conn, deadline| {
        crate::auth::deliver_challenge(conn, authkey, deadline, true)
    })
}

/// Answers the challenge of the peer of `conn` with `authkey`: Python's
/// `multiprocessing.connection.answer_challenge`, as a `Client` with an authkey does first
/// (then it challenges the listener). The whole exchange must end within `timeout`.
///
/// See [`deliver_challenge`] for an example.
///
/// # Errors
/// [`Error::Authentication`] if the peer sent no challenge, a malformed one, or did not
/// welcome our answer; [`Error::HandshakeTimeout`]; [`Error::Os`].
pub fn answer_challenge(conn: &Connection, authkey: &[u8], timeout: Duration) -> Result<()> {
    handshake(conn, timeout, |conn, deadline| {
        crate::auth::answer_challenge(conn, authkey, deadline, true)
    })
}

#[cfg(test)]
mod handshake_tests {
    use super::*;
    use crate::pipe;

    fn both(deliver_key: &'static [u8], answer_key: &'static [u8]) -> (Result<()>, Result<()>) {
        let (ours, theirs) = pipe(true).unwrap();
        let timeout = Duration::from_secs(30);
        let peer = std::thread::spawn(move || answer_challenge(&theirs, answer_key, timeout));
        let delivered = deliver_challenge(&ours, deliver_key, timeout);
        drop(ours);
        (delivered, peer.join().unwrap())
    }

    #[test]
    fn the_handshake_functions_pass_with_one_key_and_fail_with_two() {
        let (d, a) = both(b"key", b"key");
        assert!(d.is_ok() && a.is_ok(), "{d:?} {a:?}");
        let (d, a) = both(b"key", b"other");
        assert!(matches!(d, Err(Error::Authentication(_))), "{d:?}");
        assert!(matches!(a, Err(Error::Authentication(_))), "{a:?}");
    }

    #[test]
    fn a_silent_peer_is_a_timeout_not_a_hang() {
        let (ours, _theirs) = pipe(true).unwrap();
        let err = answer_challenge(&ours, b"key", Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, Error::HandshakeTimeout), "{err:?}");
    }
}
