//! Policy files of any text: compiling never panics, and every diagnostic points inside the
//! file it names.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"

[[authenticators]]
name = "keys"
type = "api_key"
keys_file = "keys.toml"
secret_file = "secret"

[policy]
files = ["p.cedar"]
attributes = { tenant = "String" }

[[upstreams]]
name = "app"
endpoints = ["http://127.0.0.1:9"]

[[routes]]
name = "r"
prefix = "/t/{tenant}"
upstream = "app"
authenticate = ["keys"]
"#;

thread_local! {
    static CONFIG_LOADED: RefCell<drawbridge_config::Config> = RefCell::new({
        let dir = std::env::temp_dir().join(format!("drawbridge-fuzz-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("keys.toml"), "").expect("keys");
        std::fs::write(dir.join("secret"), "0123456789abcdef0123456789abcdef").expect("secret");
        std::fs::write(dir.join("p.cedar"), "").expect("policy");
        std::fs::write(dir.join("d.toml"), CONFIG).expect("config");
        drawbridge_config::load(&dir.join("d.toml")).expect("config")
    });
}

fuzz_target!(|text: String| {
    CONFIG_LOADED.with_borrow_mut(|config| {
        let Some(p) = config.policy.as_mut() else { return };
        p.enforce[0].text = text.clone();
        let file = p.enforce[0].path.clone();
        let lines = text.matches('\n').count() + 1;
        if let Err(d) = drawbridge_policy::compile(config) {
            for e in &d.0 {
                if e.location.file == file {
                    assert!(e.location.line >= 1 && e.location.line <= lines, "{e}");
                }
            }
        }
    });
});
