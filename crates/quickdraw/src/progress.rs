//! Progress bars (indicatif) that disappear under `--quiet` or when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `unit` up to `len` (or a spinner when `len` is `None`).
pub fn bar(quiet: bool, len: Option<u64>, unit: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
        return pb;
    }
    let template = match len {
        Some(_) => format!(
            "{{spinner}} {{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, ETA {{eta}})"
        ),
        None => format!("{{spinner}} {{msg}} {{human_pos}} {unit} ({{per_sec}}) {{elapsed}}"),
    };
    pb.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// Byte-counting bar.
pub fn bytes_bar(quiet: bool, len: Option<u64>) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
        return pb;
    }
    let template = match len {
        Some(_) => "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
        None => "{spinner} {msg} {bytes} ({bytes_per_sec})",
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// Runs `work` while another thread calls `tick` every 100 ms (to move a bar from shared
/// counters), and stops that thread as soon as `work` returns: a sleeping ticker would hold the
/// command up to a whole period after the work is done.
pub fn with_ticker<R>(tick: impl Fn() + Sync, work: impl FnOnce() -> R) -> R {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let tick = &tick;
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(std::time::Duration::from_millis(100))
            {
                tick();
            }
        });
        let r = work();
        drop(stop);
        r
    })
}
