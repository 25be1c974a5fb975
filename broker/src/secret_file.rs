//! Secrets a node makes for itself (a lone node's cluster secret, the development app's), kept
//! in its data directory in files only their owner can read.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Writes `text` to a new file at `path` that only its owner can read, replacing any.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let staged = path.with_extension("new");
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

/// The secret kept at `path` if one is there (at least 16 printable characters), else `fresh`,
/// written there for the next start.
pub fn kept_or(path: &Path, fresh: &str) -> std::io::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim();
        if text.len() >= 16 && text.bytes().all(|b| b.is_ascii_graphic()) {
            return Ok(text.to_owned());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(path, fresh)?;
    Ok(fresh.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_secret_is_read_back_and_a_bad_one_replaced() {
        let dir = std::env::temp_dir().join(format!("chorus-secret-file-{}", std::process::id()));
        let path = dir.join("secret");
        assert_eq!(
            kept_or(&path, "first-secret-0123").unwrap(),
            "first-secret-0123"
        );
        assert_eq!(
            kept_or(&path, "second-secret-0123").unwrap(),
            "first-secret-0123"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        std::fs::write(&path, "short").unwrap();
        assert_eq!(
            kept_or(&path, "third-secret-0123").unwrap(),
            "third-secret-0123"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
