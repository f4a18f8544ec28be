//! `cargo xtask ci`: the same checks as `.ci/run`, in the same order.

use std::process::Command;

/// One check: what it is, its command line, and extra environment.
type Step = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

const STEPS: &[Step] = &[
    ("format", &["cargo", "fmt", "--all", "--check"], &[]),
    (
        "lint",
        &[
            "cargo",
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    ),
    ("test", &["cargo", "test", "--workspace"], &[]),
    (
        "docs",
        &["cargo", "doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    ),
];

pub fn run() -> Result<(), String> {
    for (what, argv, env) in STEPS {
        eprintln!("xtask ci: {what}: {}", argv.join(" "));
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .envs(env.iter().copied())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        if !status.success() {
            return Err(format!("{what} failed ({status})"));
        }
    }
    eprintln!("xtask ci: all checks passed");
    Ok(())
}
