//! `cargo xtask ci`: the same checks as `.ci/run`, in the same order.

use std::process::Command;

/// One check: what it is, its command line, and extra environment.
type Step = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

const STEPS: &[Step] = &[
    // mp-mpi, a workspace member, needs Open MPI and libclang to build: lint and docs
    // build it.
    ("mpi setup", &["cargo", "xtask", "mpi-setup"], &[]),
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
    ("test", &[".ci/leftovers", "cargo", "test"], &[]),
    (
        "soak",
        &[".ci/leftovers", "cargo", "xtask", "soak", "--quick"],
        &[],
    ),
    ("mpi", &["cargo", "xtask", "test-mpi"], &[]),
    (
        "docs",
        &["cargo", "doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    ),
    (
        "package",
        &[
            "cargo",
            "package",
            "--workspace",
            "--no-verify",
            "--allow-dirty",
            "--exclude-lockfile",
        ],
        &[],
    ),
];

pub fn run() -> Result<(), String> {
    let root = crate::bench::root();
    for (what, argv, env) in STEPS {
        eprintln!("xtask ci: {what}: {}", argv.join(" "));
        // `.ci/…` scripts are named from the root, whatever the current directory.
        let program = match argv[0].strip_prefix(".ci/") {
            Some(_) => root.join(argv[0]),
            None => argv[0].into(),
        };
        let status = Command::new(program)
            .args(&argv[1..])
            .current_dir(&root)
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
