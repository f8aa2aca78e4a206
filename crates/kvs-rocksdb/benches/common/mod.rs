//! The interleaved measurement shared by the benches (`INTERLEAVED_ROUNDS=n`): a group's
//! flavours run one after the other for about `ROUND` each, `n` times over, each round starting
//! with the next flavour, so that a drift of the machine (this disk's sync time moves by a fifth
//! within minutes, a neighbour takes a core) reaches every flavour alike. Criterion instead
//! measures one flavour for seconds before the next.

use std::time::Duration;

use ortelius_kvs::testing::parallel;

const ROUND: Duration = Duration::from_millis(400);

/// A bench's `main`: the interleaved measurement when `INTERLEAVED_ROUNDS` is set (given the
/// rounds and the group name from the command line, as criterion takes it: only the groups
/// whose name contains it run), criterion's otherwise.
pub fn main(interleaved: impl FnOnce(usize, Option<&str>), criterion: impl FnOnce()) {
    match rounds() {
        Some(rounds) => interleaved(rounds, filter().as_deref()),
        None => {
            criterion();
            criterion::Criterion::default()
                .configure_from_args()
                .final_summary();
        }
    }
}

/// The number of rounds asked for with `INTERLEAVED_ROUNDS`, if it is set; panics with the fix
/// when it is not a positive number.
fn rounds() -> Option<usize> {
    let rounds = std::env::var("INTERLEAVED_ROUNDS").ok()?;
    let n = rounds.parse::<usize>().ok().filter(|&n| n > 0);
    Some(n.expect("INTERLEAVED_ROUNDS must be a number of rounds, at least 1"))
}

/// The group name given on the command line (cargo passes `--bench`).
fn filter() -> Option<String> {
    std::env::args().skip(1).find(|a| !a.starts_with('-'))
}

/// Measures `flavours` (one of them named `ortelius`; each a name and an operation, called
/// with the operation's number: 0, 1, 2, … within a round) with `threads` threads, `rounds`
/// rounds, and prints each baseline's median time per operation next to Ortelius's, with the
/// median and the range of the rounds' ratios baseline-time / ortelius-time.
pub fn compare(group: &str, rounds: usize, threads: u64, flavours: &[(&str, impl Fn(u64) + Sync)]) {
    // Operations per round, from short runs of each flavour (also its warm-up).
    let sizes: Vec<u64> = flavours
        .iter()
        .map(|(_, op)| {
            let mut probe = threads;
            loop {
                let took = parallel(probe, threads, |_, i| op(i));
                if took >= ROUND / 8 || probe >= 1 << 30 {
                    let n = probe as f64 * ROUND.as_secs_f64() / took.as_secs_f64();
                    break (n as u64).max(threads);
                }
                probe *= 4;
            }
        })
        .collect();
    let mut per_op = vec![Vec::with_capacity(rounds); flavours.len()];
    for round in 0..rounds {
        for k in 0..flavours.len() {
            let j = (round + k) % flavours.len();
            let op = &flavours[j].1;
            let took = parallel(sizes[j], threads, |_, i| op(i));
            per_op[j].push(took.as_nanos() as f64 / sizes[j] as f64);
        }
    }
    let ours = flavours
        .iter()
        .position(|(name, _)| *name == "ortelius")
        .expect("a group has an `ortelius` flavour");
    for (j, (name, _)) in flavours.iter().enumerate().filter(|&(j, _)| j != ours) {
        let mut ratios: Vec<f64> = (0..rounds)
            .map(|r| per_op[j][r] / per_op[ours][r])
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "{group:<20} ortelius {:9.2} us  {name:<15} {:9.2} us  ratio {:5.2}x  ({:.2}-{:.2}x over {rounds} rounds)",
            median(&per_op[ours]) / 1000.0,
            median(&per_op[j]) / 1000.0,
            median(&ratios),
            ratios[0],
            ratios[rounds - 1],
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
