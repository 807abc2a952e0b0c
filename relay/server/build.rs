//! Names the source revision for `chappe_build_info`: `CHAPPE_REVISION` if
//! the builder sets it, else the git commit of the checkout, else
//! `unknown` (a source tarball).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CHAPPE_REVISION");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // HEAD for a checkout of another branch, logs/HEAD for a commit.
        for file in ["HEAD", "logs/HEAD"] {
            println!(
                "cargo:rerun-if-changed={}",
                PathBuf::from(&dir).join(file).display()
            );
        }
    }
    let revision = std::env::var("CHAPPE_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CHAPPE_REVISION={revision}");
}
