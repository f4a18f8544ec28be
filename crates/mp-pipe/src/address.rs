use std::{
    fmt,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    str::FromStr,
};

use crate::{Error, Result};

/// Where a [`Listener`](crate::Listener) listens and a [`Client`](crate::Client) connects.
///
/// Parsed from a string as Python spells addresses: a leading NUL (or `@`) is a Linux
/// abstract unix name, `host:port` is TCP (port 0 asks for any free port), anything else is
/// a unix socket path.
///
/// ```
/// use multiprocessing::connection::Address;
///
/// assert!(matches!("/tmp/app.sock".parse()?, Address::Unix(_)));
/// assert!(matches!("\0app".parse()?, Address::Abstract(name) if name == b"app"));
/// assert!(matches!("@app".parse()?, Address::Abstract(_)));
/// assert!(matches!("127.0.0.1:0".parse()?, Address::Tcp(_)));
/// assert!(matches!("localhost:6000".parse()?, Address::Tcp(_)));
/// # Ok::<(), multiprocessing::connection::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A unix socket at a filesystem path; the listener unlinks it when dropped.
    Unix(PathBuf),
    /// A Linux abstract unix socket name (no file; gone with the last socket).
    Abstract(Vec<u8>),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::BadAddress(s.into(), "empty"));
        }
        if let Some(name) = s.strip_prefix('\0').or_else(|| s.strip_prefix('@')) {
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Address::Tcp(addr));
        }
        if !s.contains('/')
            && let Some((host, port)) = s.rsplit_once(':')
            && !host.is_empty()
            && let Ok(port) = port.parse::<u16>()
        {
            return (host, port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .map(Address::Tcp)
                .ok_or(Error::BadAddress(s.into(), "host name does not resolve"));
        }
        if s.contains('\0') {
            return Err(Error::BadAddress(s.into(), "a path cannot contain NUL"));
        }
        Ok(Address::Unix(PathBuf::from(s)))
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Tcp(addr)
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Self {
        Address::Unix(path)
    }
}

impl fmt::Display for Address {
    /// The form [`FromStr`] reads back: a path, `@name`, or `host:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Address::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// Anything that names an address: an [`Address`], a `&str` to parse, a `SocketAddr`.
pub trait ToAddress {
    /// The address.
    ///
    /// # Errors
    /// [`Error::BadAddress`] when a string does not parse.
    fn to_address(&self) -> Result<Address>;
}

impl ToAddress for Address {
    fn to_address(&self) -> Result<Address> {
        Ok(self.clone())
    }
}

impl ToAddress for &Address {
    fn to_address(&self) -> Result<Address> {
        Ok((*self).clone())
    }
}

impl ToAddress for str {
    fn to_address(&self) -> Result<Address> {
        self.parse()
    }
}

impl ToAddress for &str {
    fn to_address(&self) -> Result<Address> {
        self.parse()
    }
}

impl ToAddress for String {
    fn to_address(&self) -> Result<Address> {
        self.parse()
    }
}

impl ToAddress for SocketAddr {
    fn to_address(&self) -> Result<Address> {
        Ok(Address::Tcp(*self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() {
        for s in [
            "/tmp/x.sock",
            "rel.sock",
            "@abstract",
            "127.0.0.1:80",
            "[::1]:9",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string().parse::<Address>().unwrap(), a, "{s}");
        }
    }

    #[test]
    fn bad_addresses_are_errors() {
        assert!(matches!("".parse::<Address>(), Err(Error::BadAddress(..))));
        assert!(matches!(
            "a\0b".parse::<Address>(),
            Err(Error::BadAddress(..))
        ));
    }
}
