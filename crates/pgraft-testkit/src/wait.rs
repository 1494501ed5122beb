//! Waiting for a condition with a deadline, never a fixed sleep.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Polls `probe` every `every` until it returns `Ok(Some(v))`, and returns `v`.
///
/// `Ok(None)` means "not yet"; an `Err` from the probe is remembered and reported if the
/// deadline passes, so a timeout says what was last seen going wrong.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_probe_answers() {
        let mut calls = 0;
        let v = wait_until("three calls", Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        })
        .expect("the probe answers on its third call");
        assert_eq!(v, 3);
    }

    #[test]
    fn a_timeout_reports_the_last_error() {
        let err = wait_until::<()>("never", Duration::from_millis(20), Duration::from_millis(5), || {
            anyhow::bail!("connection refused")
        })
        .expect_err("the probe never succeeds");
        let msg = format!("{err:#}");
        assert!(msg.contains("waiting for never"), "{msg}");
        assert!(msg.contains("connection refused"), "{msg}");
    }
}
