//! Telling the service manager how this process is, in systemd's notify protocol: one
//! datagram of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`).
//!
//! Two listeners may want to hear: the one waiting for this process to be ready (systemd,
//! or the Drawbridge this one replaces on an upgrade) and the service manager that
//! supervises whichever process serves. They differ only after an upgrade, where
//! `NOTIFY_SOCKET` names the predecessor's socket and [`SERVICE_VAR`] passes systemd's on.

use std::ffi::OsString;

/// The variable a predecessor passes the service manager's socket on in.
pub const SERVICE_VAR: &str = "DRAWBRIDGE_SERVICE_NOTIFY_SOCKET";

/// Where this process reports.
#[derive(Clone, Debug, Default)]
pub struct Notify {
    /// Who waits for `READY=1`.
    ready: Option<OsString>,
    /// The service manager, for everything else.
    service: Option<OsString>,
}

impl Notify {
    /// From the environment this process was started with.
    pub fn from_env() -> Notify {
        let ready = std::env::var_os("NOTIFY_SOCKET");
        let service = std::env::var_os(SERVICE_VAR).or_else(|| ready.clone());
        Notify { ready, service }
    }

    /// The service manager's socket, to pass on to a successor.
    pub fn service(&self) -> Option<&OsString> {
        self.service.as_ref()
    }

    /// Serving: `READY=1` to whoever waits for it.
    pub fn ready(&self) {
        send(self.ready.as_ref(), "READY=1\n");
    }

    /// A successor serves now: it is the service's main process.
    pub fn successor(&self, pid: u32) {
        send(self.service.as_ref(), &format!("MAINPID={pid}\nREADY=1\n"));
    }

    /// The drain has started.
    pub fn stopping(&self) {
        send(self.service.as_ref(), "STOPPING=1\n");
    }
}

/// Sends `message`; a listener that is gone is no reason to stop serving, so failures are
/// only logged.
fn send(to: Option<&OsString>, message: &str) {
    let Some(to) = to else { return };
    if let Err(e) = try_send(to, message) {
        tracing::debug!(socket = ?to, error = %e, "notify socket unreachable");
    }
}

fn try_send(to: &OsString, message: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = to.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
        }
        _ => {
            socket.send_to(message.as_bytes(), to)?;
        }
    }
    Ok(())
}
