//! `cargo xtask test-mpi`: `mp-mpi` built and run under Open MPI's `mpirun`, and the `mpi`
//! benchmark group. `mp-mpi` needs Open MPI and libclang (the `mpi` crate generates its
//! bindings with bindgen), so it sits outside the workspace's default members: these tasks
//! check for them first, install them with the system's package manager where they can
//! (Debian: `libopenmpi-dev openmpi-bin libclang-dev`, as root), and otherwise say exactly
//! what to install.
//!
//! The tests (see `crates/mp-mpi/tests/mpi.rs`):
//! - the crate's unit tests (`cargo test -p mp-mpi --lib`);
//! - the checks under `mpirun -n 4` (`MpiPool::world`: rank 0 and three workers);
//! - the same checks run alone (`MpiPool::spawn(3)`, workers started by `MPI_Comm_spawn`);
//! - a rank killed by SIGKILL in the middle of a task: `mpirun` must end the whole job with
//!   a report naming the dead rank and a non-zero status, within [`DEADLINE`];
//! - a worker running another executable (`mpirun -n 1 A : -n 2 B`): every task fails with
//!   the fingerprint check's error, and the job ends cleanly;
//! - the documentation's program, `examples/mpi_pool.rs`, under `mpirun -n 4`, printing
//!   `[1, 4, 9, 16, 25]`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::bench::{Bound, Impl, Target, Unit, Workload, root};

/// The longest any `mpirun` here may take.
const DEADLINE: Duration = Duration::from_secs(120);

/// What to install, for the message when nothing can be installed here.
const NEEDED: &str = "Open MPI (mpirun, mpicc, and its headers) and libclang: on Debian or \
                      Ubuntu `apt-get install libopenmpi-dev openmpi-bin libclang-dev`; on \
                      Fedora `dnf install openmpi-devel clang-devel` (then `module load \
                      mpi/openmpi-x86_64`); on macOS `brew install open-mpi llvm`";

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_libclang() -> bool {
    Command::new("sh")
        .args([
            "-c",
            "ldconfig -p | grep -q 'libclang[-.0-9]*\\.so' || ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Makes sure Open MPI and libclang are here: installs them with apt-get as root where
/// there is apt-get, else fails with what to install.
pub fn ensure() -> Result<(), String> {
    if have("mpirun") && have("mpicc") && have_libclang() {
        return Ok(());
    }
    if !(is_root() && have("apt-get")) {
        return Err(format!(
            "mp-mpi needs {NEEDED}; install them and run this again"
        ));
    }
    println!("test-mpi: installing libopenmpi-dev openmpi-bin libclang-dev with apt-get");
    for args in [
        &["update", "-qq"][..],
        &[
            "install",
            "-y",
            "-qq",
            "libopenmpi-dev",
            "openmpi-bin",
            "libclang-dev",
        ][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if !status.success() {
            return Err(format!(
                "apt-get {} failed ({status}); mp-mpi needs {NEEDED}",
                args[0]
            ));
        }
    }
    if have("mpirun") && have("mpicc") && have_libclang() {
        Ok(())
    } else {
        Err(format!(
            "installed, yet not all found: mp-mpi needs {NEEDED}"
        ))
    }
}

/// `mpirun` with what this machine needs: room for more ranks than cores, and leave to run
/// as root where the runner is root.
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-n", &ranks.to_string(), "--oversubscribe"]);
    allow_root(&mut cmd);
    cmd
}

fn allow_root(cmd: &mut Command) {
    if is_root() {
        cmd.arg("--allow-run-as-root");
        // (The flag is mpirun's; a program run alone that spawns needs the variables.)
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
}

/// What a run printed, and how it ended; killed (and an error) past [`DEADLINE`].
struct Ran {
    ok: bool,
    status: String,
    out: String,
    err: String,
}

fn run_bounded(mut cmd: Command) -> Result<Ran, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{shown} hung: killed after {DEADLINE:?}"));
        }
        // Polling a child's exit, not synchronizing with it.
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Ran {
        ok: status.success(),
        status: status.to_string(),
        out: out.join().unwrap_or_default(),
        err: err.join().unwrap_or_default(),
    })
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn cargo_ok(args: &[&str]) -> Result<String, String> {
    let out = cargo()
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cargo {}: {e}", args.join(" ")))?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprint!("{err}");
    if out.status.success() {
        Ok(err)
    } else {
        Err(format!("cargo {} failed", args.join(" ")))
    }
}

/// The test program's path, from what `cargo test --no-run` says.
fn test_program() -> Result<PathBuf, String> {
    let said = cargo_ok(&["test", "-p", "mp-mpi", "--test", "mpi", "--no-run"])?;
    said.lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("Executable tests/mpi.rs (")?;
            Some(root().join(rest.strip_suffix(')')?))
        })
        .ok_or_else(|| "cargo did not say where the MPI test program is".into())
}

fn expect(name: &str, ran: &Ran, ok: bool, needle: &str) -> Result<(), String> {
    let both = format!("{}\n{}", ran.out, ran.err);
    if ran.ok == ok && both.contains(needle) {
        println!("test-mpi: {name}: ok");
        Ok(())
    } else {
        Err(format!(
            "test-mpi: {name}: ended {} (wanted {}), looking for {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            ran.status,
            if ok { "success" } else { "failure" },
            ran.out,
            ran.err
        ))
    }
}

pub fn test() -> Result<(), String> {
    ensure()?;
    cargo_ok(&["test", "-p", "mp-mpi", "--lib"])?;
    let program = test_program()?;
    cargo_ok(&["build", "--example", "mpi_pool", "--features", "mpi"])?;
    let example = root().join("target/debug/examples/mpi_pool");

    let mut cmd = mpirun(4);
    cmd.arg(&program);
    expect(
        "the checks under mpirun -n 4",
        &run_bounded(cmd)?,
        true,
        "checks passed on a pool of 3 workers (mpirun)",
    )?;

    let mut cmd = Command::new(&program);
    allow_root(&mut cmd);
    expect(
        "the checks alone, on 3 spawned workers",
        &run_bounded(cmd)?,
        true,
        "checks passed on a pool of 3 workers (spawned)",
    )?;

    let mut cmd = mpirun(3);
    cmd.arg(&program).arg("die");
    let ran = run_bounded(cmd)?;
    expect(
        "a rank killed mid-task ends the job, naming it",
        &ran,
        false,
        "exited on signal 9",
    )?;

    let mut cmd = mpirun(1);
    cmd.arg(&program)
        .arg("foreign")
        .args([":", "-n", "2"])
        .arg(&example);
    expect(
        "workers running another executable refuse its tasks",
        &run_bounded(cmd)?,
        true,
        "refused by a worker of another build",
    )?;

    let mut cmd = mpirun(4);
    cmd.arg(&example);
    expect(
        "the documentation's program under mpirun -n 4",
        &run_bounded(cmd)?,
        true,
        "[1, 4, 9, 16, 25]",
    )?;
    println!("test-mpi: all passed");
    Ok(())
}

/// The `mpi` benchmark group: our `MpiPool` and mpi4py's pool, each under `mpirun -n 3`
/// (rank 0 and two workers), and our `mp-pool` with two workers, on the same machine.
pub fn workloads() -> Vec<Workload> {
    let names = [
        ("mpi_task_chunk1", Unit::NsPerOp),
        ("mpi_map_1m", Unit::NsPerOp),
        ("mpi_cpu16_speedup", Unit::Speedup),
    ];
    names
        .into_iter()
        .map(|(name, unit)| Workload {
            name,
            unit,
            impls: vec![mpi4py(name), ours(name), ours_pool(name)],
        })
        .collect()
}

/// Issue 19's targets, checked after the table.
pub fn targets() -> Vec<Target> {
    vec![
        Target::new(
            "mpi_task_chunk1",
            "mpi4py/util.pool",
            "ours/mp-mpi",
            Bound::AtLeast(10.0),
        ),
        Target::new(
            "mpi_map_1m",
            "mpi4py/util.pool",
            "ours/mp-mpi",
            Bound::AtLeast(10.0),
        ),
        Target::new(
            "mpi_cpu16_speedup",
            "ours/mp-mpi",
            "ours/mp-pool",
            Bound::AtLeast(0.9),
        ),
    ]
}

fn number(ran: &Ran, what: &str) -> Result<f64, String> {
    if !ran.ok {
        return Err(format!(
            "{what} failed ({}): {}",
            ran.status,
            ran.err.trim()
        ));
    }
    ran.out
        .trim()
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| format!("{what} printed {:?}, not a number", ran.out))
}

fn ours(workload: &'static str) -> Impl {
    let mut built: Option<PathBuf> = None;
    Impl::new("ours/mp-mpi", move || {
        if built.is_none() {
            ensure()?;
            cargo_ok(&[
                "build",
                "--release",
                "-p",
                "mp-mpi",
                "--example",
                "mpi_bench",
            ])?;
            built = Some(root().join("target/release/examples/mpi_bench"));
        }
        let mut cmd = mpirun(3);
        cmd.arg(built.as_ref().unwrap()).arg(workload);
        number(&run_bounded(cmd)?, "mpi_bench")
    })
}

fn mpi4py(workload: &'static str) -> Impl {
    let script = root().join("benches/python/mpi.py");
    let mut ready = false;
    Impl::new("mpi4py/util.pool", move || {
        if !ready {
            ensure()?;
            ensure_mpi4py()?;
            ready = true;
        }
        let mut cmd = mpirun(3);
        cmd.args(["python3", "-m", "mpi4py.futures"])
            .arg(&script)
            .arg(workload)
            .current_dir(script.parent().unwrap_or(Path::new(".")));
        number(&run_bounded(cmd)?, "mpi.py")
    })
}

/// mpi4py, from the Python registry, compiled here against this Open MPI if it is missing.
fn ensure_mpi4py() -> Result<(), String> {
    let found = Command::new("python3")
        .args(["-c", "import mpi4py.util.pool"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Ok(());
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--no-binary=mpi4py", "mpi4py"])
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("pip install mpi4py failed".into())
    }
}

/// Our `mp-pool` with two workers, the same jobs in this process: the pool group's own rows.
fn ours_pool(workload: &'static str) -> Impl {
    use crate::bench::pool;
    match workload {
        "mpi_task_chunk1" => pool::ours_chunk1(),
        "mpi_map_1m" => pool::ours_map(),
        _ => pool::ours_cpu16(),
    }
    .on_first_cpus(2)
}
