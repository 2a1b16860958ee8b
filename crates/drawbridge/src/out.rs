//! Standard output for the CLI. A reader that goes away (`drawbridge test | head`) ends the
//! output quietly: the command still runs to its end and exits with its own status.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to standard output, unless its reader is gone.
pub fn line(args: std::fmt::Arguments<'_>) {
    write(args, b"\n");
}

/// Writes `text` as it is to standard output, unless its reader is gone.
pub fn text(text: &str) {
    write(format_args!("{text}"), b"");
}

fn write(args: std::fmt::Arguments<'_>, end: &[u8]) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_fmt(args)
        .and_then(|()| out.write_all(end))
        .is_err()
    {
        // A closed pipe, or a full disk: nothing more can be said there.
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `println!` that survives a closed standard output.
macro_rules! say {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use say;
