//! The admin API's bearer token, read from `admin.token_file` whenever the config is loaded
//! (start, and every reload), so rotating it is: write the new file, then reload.

use std::fmt;
use std::path::{Path, PathBuf};

/// A token and the file it came from. Never printed: `Debug` shows the path only.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub path: PathBuf,
    secret: Box<[u8]>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({}, <redacted>)", self.path.display())
    }
}

impl AdminToken {
    /// Reads the token: the file's text without surrounding whitespace (editors add a newline).
    pub fn read(path: &Path) -> Result<AdminToken, String> {
        let text = super::read::read_regular(path)?;
        let secret = text.trim_ascii();
        if secret.is_empty() {
            return Err(format!(
                "the admin token file {} is empty; put a long random token in it, e.g. `openssl rand -hex 32 > {}`",
                path.display(),
                path.display()
            ));
        }
        if secret.iter().any(|&b| !(0x21..=0x7e).contains(&b)) {
            return Err(format!(
                "the admin token in {} has spaces or non-ASCII bytes; a bearer token is one word of visible ASCII",
                path.display()
            ));
        }
        Ok(AdminToken {
            path: path.to_owned(),
            secret: secret.into(),
        })
    }

    /// The token itself, for a client to send (checked to be visible ASCII when read).
    pub fn reveal(&self) -> &str {
        std::str::from_utf8(&self.secret).unwrap_or_default()
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(&self.secret, presented)
    }

    /// Whether the file now holds another token (or cannot be read): a reload must not skip it.
    pub fn file_changed(&self) -> bool {
        AdminToken::read(&self.path).map_or(true, |now| now.secret != self.secret)
    }
}

/// Compares every byte of the longer input whatever the contents, so the time taken reveals
/// at most the lengths (the token's length is not the secret; its bytes are).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_and_the_length_agree() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret\0"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn reads_trimmed_and_rejects_empty_files() {
        let dir = std::env::temp_dir().join(format!("sy-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "  abc123\n").unwrap();
        let t = AdminToken::read(&p).unwrap();
        assert!(t.matches(b"abc123"));
        assert!(!format!("{t:?}").contains("abc123"));
        assert!(!t.file_changed());
        std::fs::write(&p, "\n").unwrap();
        assert!(AdminToken::read(&p).unwrap_err().contains("is empty"));
        assert!(t.file_changed());
        assert!(
            AdminToken::read(&dir.join("missing"))
                .unwrap_err()
                .contains("cannot read")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
