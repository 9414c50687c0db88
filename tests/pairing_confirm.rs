//! Pairing needs both users' yes (issue M12), with real `masq store`
//! processes, a real relay and the CLI answering on its stdin as a user
//! would:
//! - two users who see the same code and say yes are paired, and nothing is
//!   stored on either device while only one of them has said yes;
//! - someone who holds the invite and sits between the two devices (joining
//!   the inviter's invite with a device of its own, and inviting the victim's
//!   other device with another) shows them different codes; they say no, and
//!   nothing is stored anywhere.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{cli, Daemon};

const T: Duration = Duration::from_secs(60);

/// A `masq pair ...` process whose stderr lines arrive on a channel and
/// whose stdin answers the prompt.
struct PairCli {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Its stdout's first line (the invite, for `pair invite`).
    first_out: mpsc::Receiver<String>,
}

impl PairCli {
    fn spawn(d: &Daemon, args: &[&str]) -> PairCli {
        let mut child = d
            .cli()
            .arg("pair")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).split(b'\n').map_while(Result::ok) {
                // The prompt has no newline: it arrives with the next line.
                let _ = tx.send(String::from_utf8_lossy(&line).to_string());
            }
        });
        let (otx, first_out) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = otx.send(line.trim().to_string());
        });
        let stdin = child.stdin.take();
        PairCli {
            child,
            stdin,
            lines,
            first_out,
        }
    }

    fn invite(&self) -> String {
        self.first_out.recv_timeout(T).expect("an invite on stdout")
    }

    /// Waits for the code it shows.
    fn code(&self) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(T)
                .expect("a pairing code on stderr");
            if let Some(rest) = line.split("Pairing code: ").nth(1) {
                return rest.chars().take(6).collect();
            }
        }
    }

    fn answer(&mut self, yes: bool) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(if yes { b"y\n" } else { b"n\n" }).unwrap();
    }

    /// Exit status and the rest of stderr (read to its end: the reader
    /// thread may still hold the last lines when the process has exited).
    fn finish(mut self) -> (bool, String) {
        let ok = self.child.wait().unwrap().success();
        let rest: Vec<String> = self.lines.iter().collect();
        (ok, rest.join("\n"))
    }
}

/// The devices `d` has paired (`masq devices list`: this device first,
/// then one line per paired device).
fn devices(d: &Daemon) -> Vec<String> {
    cli(&d.path(), &["devices", "list"])
        .lines()
        .skip(1)
        .filter(|l| !l.contains(" removed"))
        .map(str::to_string)
        .collect()
}

/// `masq pair invite` on `a` and `masq pair join` of its invite on `b`,
/// both shown their codes and waiting for their users: (invite, join,
/// the invite's URI, the inviter's code, the joiner's code).
fn to_codes(a: &Daemon, b: &Daemon) -> (PairCli, PairCli, String, String, String) {
    let invite = PairCli::spawn(a, &["invite"]);
    let uri = invite.invite();
    let join = PairCli::spawn(b, &["join", &uri]);
    let (code_a, code_b) = (invite.code(), join.code());
    (invite, join, uri, code_a, code_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_who_see_the_same_code_and_say_yes_are_paired_and_not_before() {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let a = Daemon::start(Some(&relay.url()));
    let b = Daemon::start(Some(&relay.url()));
    let (a, b) = tokio::task::spawn_blocking(move || {
        let (mut invite, mut join, uri, code_a, code_b) = to_codes(&a, &b);
        assert!(uri.starts_with("masq:pair?v=2&"), "{uri}");
        assert_eq!(code_a, code_b, "both devices show one code");
        assert!(code_a.chars().all(|c| c.is_ascii_digit()) && code_a.len() == 6);
        // B's user says yes; A's has not answered: nothing is stored.
        join.answer(true);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            devices(&a).is_empty(),
            "A stored B before its user said yes"
        );
        assert!(
            devices(&b).is_empty(),
            "B stored A before A's user said yes"
        );
        invite.answer(true);
        let (ok_a, err_a) = invite.finish();
        let (ok_b, err_b) = join.finish();
        assert!(ok_a && ok_b, "A: {err_a}\nB: {err_b}");
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(devices(&a).len(), 1);
    assert_eq!(devices(&b).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_with_the_invite_shows_different_codes_and_nothing_is_stored() {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    // The user's laptop (A) and phone (B); the attacker's two devices, one
    // for each side, named like the victims' devices.
    let a = Daemon::start(Some(&relay.url()));
    let b = Daemon::start(Some(&relay.url()));
    let m_to_a = Daemon::start(Some(&relay.url()));
    let m_to_b = Daemon::start(Some(&relay.url()));
    cli(&m_to_a.path(), &["devices", "name", "phone"]);
    cli(&m_to_b.path(), &["devices", "name", "laptop"]);
    let all = tokio::task::spawn_blocking(move || {
        // A invites. The attacker has seen the invite: it joins it, and
        // shows the phone an invite of its own in its place.
        let mut invite_a = PairCli::spawn(&a, &["invite"]);
        let uri_a = invite_a.invite();
        let mut mallory_joins = PairCli::spawn(&m_to_a, &["join", &uri_a]);
        let mut mallory_invites = PairCli::spawn(&m_to_b, &["invite"]);
        let uri_m = mallory_invites.invite();
        let mut join_b = PairCli::spawn(&b, &["join", &uri_m]);
        let (code_a, code_b) = (invite_a.code(), join_b.code());
        let (m1, m2) = (mallory_joins.code(), mallory_invites.code());
        assert_eq!(code_a, m1, "A and the attacker's first device agree");
        assert_eq!(code_b, m2, "B and the attacker's second device agree");
        // The attacker had one guess at making the two screens agree
        // (1 in 10^6): they differ.
        assert_ne!(
            code_a, code_b,
            "the laptop and the phone show different codes"
        );
        // The attacker says yes on both of its devices; the user sees two
        // different codes and says no on both of hers.
        mallory_joins.answer(true);
        mallory_invites.answer(true);
        invite_a.answer(false);
        join_b.answer(false);
        for (who, p) in [
            ("A", invite_a),
            ("B", join_b),
            ("the attacker's join", mallory_joins),
            ("the attacker's invite", mallory_invites),
        ] {
            let (ok, err) = p.finish();
            assert!(!ok, "{who} succeeded: {err}");
            assert!(err.contains("declined"), "{who}: {err}");
        }
        [a, b, m_to_a, m_to_b]
    })
    .await
    .unwrap();
    for d in &all {
        assert!(
            devices(d).is_empty(),
            "a device was stored: {:?}",
            devices(d)
        );
    }
}

/// The user who was asked goes away (the inviting CLI is killed at its
/// prompt): its admin connection closes, the store takes that as a no, and
/// the joiner hears "declined" at once, not when the invite expires ten
/// minutes later. Nothing is stored on either device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_goes_away_at_the_prompt_declines() {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let a = Daemon::start(Some(&relay.url()));
    let b = Daemon::start(Some(&relay.url()));
    let (a, b) = tokio::task::spawn_blocking(move || {
        let (mut invite, mut join, _, code_a, code_b) = to_codes(&a, &b);
        assert_eq!(code_a, code_b);
        join.answer(true);
        let started = std::time::Instant::now();
        invite.child.kill().unwrap();
        let _ = invite.child.wait();
        let (ok, err) = join.finish();
        assert!(!ok && err.contains("declined"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the joiner waited {:?}",
            started.elapsed()
        );
        (a, b)
    })
    .await
    .unwrap();
    assert!(devices(&a).is_empty() && devices(&b).is_empty());
}
