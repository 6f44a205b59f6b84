//! [`CliError`]: what went wrong, as one readable line and a distinct exit code.
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the job ended `dead` or `cancelled` (`--wait`), or another failure |
//! | 2 | bad usage or input (a flag, a payload, a 400 from the server) |
//! | 3 | not found (an unknown id or prefix) |
//! | 4 | conflict (an illegal move, an idempotency key reused) |
//! | 5 | authentication or permission (no token, an expired token, a 403) |
//! | 6 | the server failed or could not be reached |

use std::fmt;

use serde_json::Value;

/// The class of a failure, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The job ended `dead` or `cancelled`, or a failure with no better class.
    Failed,
    /// Bad usage or input.
    Usage,
    /// No such job, file or token.
    NotFound,
    /// An illegal move or a reused key.
    Conflict,
    /// No valid credentials, or not allowed.
    Auth,
    /// The server failed or could not be reached.
    Server,
}

impl Kind {
    /// The process exit code of this class.
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Failed => 1,
            Kind::Usage => 2,
            Kind::NotFound => 3,
            Kind::Conflict => 4,
            Kind::Auth => 5,
            Kind::Server => 6,
        }
    }

    /// The class of an HTTP error status.
    pub fn of_status(status: u16) -> Self {
        match status {
            401 | 403 => Kind::Auth,
            404 | 410 => Kind::NotFound,
            409 => Kind::Conflict,
            400 | 405 | 411..=418 | 422 => Kind::Usage,
            _ => Kind::Server,
        }
    }
}

/// A failure of a client command.
#[derive(Debug, Clone)]
pub struct CliError {
    /// Its class, which decides the exit code.
    pub kind: Kind,
    /// One line for the user.
    pub message: String,
}

impl CliError {
    /// A failure of class `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Bad usage or input.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }

    /// The server could not be reached or answered nonsense.
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(Kind::Server, message)
    }

    /// An error response: the problem document's `detail` and `code` when it is one.
    pub fn from_response(status: u16, body: &[u8]) -> Self {
        let kind = Kind::of_status(status);
        let problem: Option<Value> = serde_json::from_slice(body).ok();
        let message = match problem.as_ref().and_then(|p| p["detail"].as_str()) {
            Some(detail) => {
                let code = problem
                    .as_ref()
                    .and_then(|p| p["code"].as_str())
                    .unwrap_or("error");
                let mut m = format!("{detail} ({code})");
                if status == 401 {
                    m.push_str("; log in again with `kiln login`");
                }
                m
            }
            None => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    format!("the server answered {status}")
                } else {
                    format!("the server answered {status}: {}", first_line(text))
                }
            }
        };
        Self { kind, message }
    }
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(200) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// The result of a client command.
pub type CliResult<T> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_reads_as_its_detail_and_code() {
        let body = br#"{"type":"about:blank","title":"Not Found","status":404,"detail":"job 0192 not found","code":"not_found","request_id":"r"}"#;
        let e = CliError::from_response(404, body);
        assert_eq!(e.kind.exit_code(), 3);
        assert_eq!(e.message, "job 0192 not found (not_found)");
    }

    #[test]
    fn every_status_class_has_its_exit_code() {
        let codes: Vec<i32> = [400, 401, 403, 404, 409, 413, 429, 500, 503]
            .into_iter()
            .map(|s| Kind::of_status(s).exit_code())
            .collect();
        assert_eq!(codes, [2, 5, 5, 3, 4, 2, 6, 6, 6]);
    }

    #[test]
    fn a_body_that_is_not_a_problem_is_quoted_briefly() {
        let e = CliError::from_response(502, b"<html>bad gateway</html>\nmore");
        assert_eq!(
            e.message,
            "the server answered 502: <html>bad gateway</html>"
        );
        assert_eq!(e.kind, Kind::Server);
    }
}
