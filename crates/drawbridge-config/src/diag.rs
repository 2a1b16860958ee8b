//! Diagnostics: every configuration error names the file, the line and the field.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a value stands in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file the value was read from.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is.
    pub location: Location,
    /// The field, as a path from the document root (`routes[2].upstream`).
    pub field: String,
    /// What is wrong, lower-case, no final period.
    pub message: String,
    /// How to fix it, when there is something to say.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error: {}: `{}`: {}",
            self.location, self.field, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// The diagnostic as a warning line (`warning: file:line:col: ...`).
    pub fn as_warning(&self) -> String {
        let text = self.to_string();
        match text.strip_prefix("error: ") {
            Some(rest) => format!("warning: {rest}"),
            None => text,
        }
    }
}

/// Every problem found in one configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

/// Turns byte offsets of one source into lines and columns, and collects diagnostics.
pub(crate) struct Reporter<'a> {
    file: &'a Path,
    line_starts: Vec<usize>,
    found: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(file: &'a Path, source: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file,
            line_starts,
            found: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn locate(&self, offset: usize) -> Location {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let column = offset - self.line_starts[line - 1] + 1;
        Location {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    pub(crate) fn error(
        &mut self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(offset, field.into(), message.into(), None);
    }

    pub(crate) fn error_help(
        &mut self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(offset, field.into(), message.into(), Some(help.into()));
    }

    /// Notes something the operator should know that does not make the file wrong.
    pub(crate) fn warn(
        &mut self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let location = self.locate(offset);
        self.warnings.push(Diagnostic {
            location,
            field: field.into(),
            message: message.into(),
            help: Some(help.into()),
        });
    }

    /// The warnings noted so far.
    pub(crate) fn take_warnings(&mut self) -> Vec<Diagnostic> {
        std::mem::take(&mut self.warnings)
    }

    fn push(&mut self, offset: usize, field: String, message: String, help: Option<String>) {
        let location = self.locate(offset);
        self.found.push(Diagnostic {
            location,
            field,
            message,
            help,
        });
    }

    /// Takes in problems found in another file (a keys file the config names).
    pub(crate) fn absorb(&mut self, other: Diagnostics) {
        self.found.extend(other.0);
    }

    pub(crate) fn finish(self) -> Result<(), Diagnostics> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(Diagnostics(self.found))
        }
    }
}
