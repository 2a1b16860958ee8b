//! Configurations for tests, built as values: a [`Config`] is a TOML table changed by key
//! and merged by structure, never text edited by search and replace (an edit that misses
//! its text silently tests another configuration).

use toml::{Table, Value};

/// A Drawbridge configuration under construction.
#[derive(Clone, Debug)]
pub struct Config(Value);

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// One listener `main` on `127.0.0.1:0`, the access log off, files not watched.
    pub fn new() -> Config {
        Config::parse(
            "[server]\naccess_log = \"off\"\nwatch = false\n\n\
             [[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n",
        )
    }

    /// The configuration `text` says, to change further.
    pub fn parse(text: &str) -> Config {
        Config(Value::Table(text.parse::<Table>().unwrap_or_else(|e| {
            panic!("test configuration is not TOML: {e}\n{text}")
        })))
    }

    /// Adds what `text` says: tables are merged key by key, arrays of tables (routes,
    /// upstreams, authenticators) extended, other values replaced.
    pub fn with(mut self, text: &str) -> Config {
        if let (Value::Table(mine), Value::Table(theirs)) = (&mut self.0, Config::parse(text).0) {
            merge(mine, theirs);
        }
        self
    }

    /// Sets the value at `path`: dotted keys, with numbers indexing arrays
    /// (`routes.0.authenticate`). Tables on the way are made where missing.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> Config {
        let (parent, last) = self.parent(path);
        match parent {
            Value::Table(t) => {
                t.insert(last.to_string(), value.into());
            }
            Value::Array(a) => {
                let i: usize = last.parse().unwrap_or_else(|_| panic!("`{path}`: index"));
                a[i] = value.into();
            }
            _ => panic!("`{path}`: not in a table"),
        }
        self
    }

    /// Removes the value at `path`; it must be there.
    pub fn remove(mut self, path: &str) -> Config {
        let (parent, last) = self.parent(path);
        let gone = match parent {
            Value::Table(t) => t.remove(last).is_some(),
            _ => false,
        };
        assert!(gone, "`{path}`: nothing to remove");
        self
    }

    /// `[server]` `key = value`.
    pub fn server(self, key: &str, value: impl Into<Value>) -> Config {
        self.set(&format!("server.{key}"), value)
    }

    /// The first listener's `key = value`.
    pub fn listener(self, key: &str, value: impl Into<Value>) -> Config {
        self.set(&format!("listeners.0.{key}"), value)
    }

    /// The first listener's `[listeners.limits]` `key = value`.
    pub fn limits(self, key: &str, value: impl Into<Value>) -> Config {
        self.set(&format!("listeners.0.limits.{key}"), value)
    }

    /// The value at `path`, if there is one.
    pub fn get(&self, path: &str) -> Option<&Value> {
        let mut at = Some(&self.0);
        for key in path.split('.') {
            at = match at {
                Some(Value::Table(t)) => t.get(key),
                Some(Value::Array(a)) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
        }
        at
    }

    /// The configuration as TOML text, to write to a file.
    pub fn text(&self) -> String {
        toml::to_string(&self.0).unwrap_or_else(|e| panic!("test configuration: {e}"))
    }

    /// The value holding the last key of `path`, and that key.
    fn parent<'a>(&mut self, path: &'a str) -> (&mut Value, &'a str) {
        let keys: Vec<&'a str> = path.split('.').collect();
        let Some((last, walk)) = keys.split_last() else {
            panic!("empty path")
        };
        let mut cur = &mut self.0;
        for key in walk {
            cur = match cur {
                Value::Table(t) => t
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Table(Table::new())),
                Value::Array(a) => {
                    let i: usize = key
                        .parse()
                        .unwrap_or_else(|_| panic!("`{path}`: `{key}` indexes an array"));
                    a.get_mut(i)
                        .unwrap_or_else(|| panic!("`{path}`: no element {i}"))
                }
                _ => panic!("`{path}`: `{key}` is not in a table"),
            };
        }
        (cur, last)
    }
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

/// The table `text` says, as a value to [`Config::set`] (a listener's `tls`).
pub fn table(text: &str) -> Value {
    Value::Table(
        text.parse::<Table>()
            .unwrap_or_else(|e| panic!("test TOML table: {e}\n{text}")),
    )
}

/// The line (from 1) of `text` on which `needle` first appears, to check where a diagnostic
/// points in a configuration written from a [`Config`].
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` is not in:\n{text}"))
}

/// A TOML array of strings.
pub fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

fn merge(into: &mut Table, add: Table) {
    for (key, value) in add {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(mine)), Value::Table(theirs)) => merge(mine, theirs),
            (Some(Value::Array(mine)), Value::Array(theirs))
                if theirs.iter().all(Value::is_table) =>
            {
                mine.extend(theirs)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_by_key_merge_by_structure() {
        let c = Config::new()
            .with("[[routes]]\nname = \"a\"\npublic = true\n")
            .with("[[routes]]\nname = \"b\"\n[server]\nshutdown_timeout = \"5s\"\n")
            .limits("max_connections", 2)
            .set("routes.1.authenticate", strings(&["corp"]))
            .remove("routes.0.public");
        let again = Config::parse(&c.text());
        assert_eq!(
            again.get("routes.1.name").and_then(Value::as_str),
            Some("b")
        );
        assert_eq!(
            again.get("routes.1.authenticate.0").and_then(Value::as_str),
            Some("corp")
        );
        assert!(again.get("routes.0.public").is_none());
        // `with` merged the server table instead of replacing it.
        assert_eq!(
            again.get("server.access_log").and_then(Value::as_str),
            Some("off")
        );
        assert_eq!(
            again.get("server.shutdown_timeout").and_then(Value::as_str),
            Some("5s")
        );
        assert_eq!(
            again
                .get("listeners.0.limits.max_connections")
                .and_then(Value::as_integer),
            Some(2)
        );
        assert_eq!(line_of("a\nb = 1\n", "b ="), 2);
    }

    #[test]
    #[should_panic(expected = "nothing to remove")]
    fn removing_what_is_not_there_fails_the_test() {
        let _ = Config::new().remove("server.nope");
    }
}
