//! Fuzzes the scenario TOML parser and validator; small valid scenarios are also booted
//! and run a few ticks, and every valid scenario must round-trip through `to_toml`.

use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;

/// One fuzz input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(s) = Scenario::from_toml(&text) else {
        return;
    };
    if let Ok(again) = s.to_toml() {
        assert_eq!(Scenario::from_toml(&again).ok().as_ref(), Some(&s));
    }
    let sites: usize = s.modules.iter().map(|m| m.sites.len()).sum();
    let bg: u64 = s.background.iter().map(|b| b.count).sum();
    let busy = s
        .modules
        .iter()
        .flat_map(|m| &m.sites)
        .any(|x| x.count > 20);
    if s.boot_ticks <= 50
        && sites <= 40
        && bg <= 2000
        && !busy
        && s.modules.len() <= 8
        && let Ok(mut m) = Machine::boot(&s)
    {
        m.run(20);
    }
}
