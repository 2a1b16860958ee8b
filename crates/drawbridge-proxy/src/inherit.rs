//! Listening sockets handed to this process when it starts: by a service manager (systemd
//! socket activation, `LISTEN_FDS`), or by the Drawbridge it replaces (see `serve`'s
//! upgrade on SIGUSR2, which hands them over the same way). A listener whose address is
//! that of a socket handed over takes the socket instead of binding: the socket is never
//! closed while processes change, so no connection is refused.

use std::net::SocketAddr;

/// The listening sockets this process was given.
#[derive(Default)]
pub struct Inherited {
    sockets: Vec<(SocketAddr, std::net::TcpListener)>,
}

impl Inherited {
    /// Takes the sockets named by `LISTEN_FDS` (file descriptors from 3 on; `LISTEN_PID`,
    /// when set, must be this process). Call it before any other thread starts: it removes
    /// those variables from the environment, so that no process started later takes the
    /// sockets for its own. A descriptor that is not a TCP listening socket is refused with
    /// a warning and left alone.
    pub fn from_env() -> Inherited {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::new();
        for i in 0..fds.len() {
            match fds.take_tcp_listener(i) {
                Ok(Some(l)) => match l.local_addr() {
                    Ok(addr) => sockets.push((addr, l)),
                    Err(e) => {
                        tracing::warn!(fd = 3 + i, error = %e, "inherited socket has no address; closed")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(fd = 3 + i, error = %e, "inherited descriptor is not a TCP listener; ignored")
                }
            }
        }
        Inherited { sockets }
    }

    /// No sockets: every listener binds its own.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// The socket listening on exactly `addr`, if one was handed over. An address with
    /// port 0 (any free port) never matches.
    pub(crate) fn take(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        if addr.port() == 0 {
            return None;
        }
        let i = self.sockets.iter().position(|(a, _)| *a == addr)?;
        Some(self.sockets.swap_remove(i).1)
    }

    /// Closes the sockets no listener took, saying which.
    pub(crate) fn close_unused(self) {
        for (addr, _) in self.sockets {
            tracing::warn!(address = %addr, "inherited socket matches no listener; closed");
        }
    }
}
