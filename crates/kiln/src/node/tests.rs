use std::os::unix::fs::PermissionsExt;

use super::private_dir;

#[test]
fn data_dirs_in_a_shared_place_are_our_own_or_refused() {
    let base = tempfile::tempdir().unwrap();
    let fresh = base.path().join("fresh");
    private_dir(&fresh).unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // Ours already: fine, again and again.
    private_dir(&fresh).unwrap();
    // A link planted under the name, or a file: refused.
    let link = base.path().join("planted");
    std::os::unix::fs::symlink(&fresh, &link).unwrap();
    let err = private_dir(&link).unwrap_err().to_string();
    assert!(err.contains("not a directory of this user's"), "{err}");
    let file = base.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(private_dir(&file).is_err());
}
