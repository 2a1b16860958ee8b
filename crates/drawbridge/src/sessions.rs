//! `drawbridge sessions revoke`: ends sessions in the store the configuration names. Redis
//! is written directly; the embedded store, held by a running instance, through that
//! instance's admin listener.

use std::path::Path;
use std::process::ExitCode;

use drawbridge_session::{RevokeError, Served, Sessions, Store};

pub async fn revoke(config: &Path, session: Option<&str>, user: Option<&str>) -> ExitCode {
    let cfg = match drawbridge_config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(settings) = cfg.sessions.clone() else {
        eprintln!(
            "error: `{}` keeps no sessions (no `oidc` authenticator)",
            config.display()
        );
        return ExitCode::FAILURE;
    };
    let store = match Store::open(&settings.store) {
        Ok(s) => s,
        Err(e) if e.in_use() => return through_admin(&cfg, session, user).await,
        Err(e) => {
            eprintln!("error: opening the session store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sessions = match Sessions::new(store, settings, Served::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match drawbridge_session::revoke(&sessions, session, user).await {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(RevokeError::NotFound) => {
            eprintln!("error: no such session");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The embedded store is held by a running instance: ask it, on its admin listener.
async fn through_admin(
    cfg: &drawbridge_config::Config,
    session: Option<&str>,
    user: Option<&str>,
) -> ExitCode {
    let Some(admin) = &cfg.admin else {
        eprintln!(
            "error: the embedded session store is in use by a running Drawbridge, which has no `[admin]` listener to ask; add one (loopback) and reload, or stop it"
        );
        return ExitCode::FAILURE;
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(s) = session {
        query.append_pair("session", s);
    }
    if let Some(u) = user {
        query.append_pair("user", u);
    }
    match crate::admin::call(
        admin.address,
        "POST",
        &format!("/sessions/revoke?{}", query.finish()),
        None,
    )
    .await
    {
        Ok((200, body)) => {
            print!("{body}");
            eprintln!("(through the running instance at {})", admin.address);
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            eprint!("error: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "error: asking the running instance at {}: {e}",
                admin.address
            );
            ExitCode::FAILURE
        }
    }
}
