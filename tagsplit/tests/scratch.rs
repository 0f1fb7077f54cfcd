#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
use tagsplit::console::Console;
use tagsplit::target::sim::SimTarget;
#[test]
fn scratch() {
    let mut t = SimTarget::builtin("part4").unwrap();
    let mut c = Console::new();
    tagsplit::demo::transcript(&mut t, &mut c, &tagsplit::demo::SEED_COMMANDS);
    println!("{}", c.execute(&mut t, "!poolused 1 Lea*"));
    let out = c.execute(&mut t, "s -1a fffffa80`01000000 L?80000000 \"Lea1\"");
    println!("{}", &out[..out.len().min(400)]);
    let first = out.lines().next().unwrap_or("0").to_string();
    println!("{}", c.execute(&mut t, &format!("db {first}-4 l20")));
    println!("{}", c.execute(&mut t, &format!("!pool {first}")));
    println!("{}", c.execute(&mut t, "!poolfind Lea2"));
    let t0 = std::time::Instant::now();
    let mut t = SimTarget::builtin("many-sites").unwrap();
    let r =
        tagsplit::split::Split::new(&mut t, tagsplit::PoolTag::new(*b"Ddk "), Default::default())
            .run();
    match r {
        Ok(r) => println!("{}", r.to_text()),
        Err(e) => println!("ERR {e}"),
    }
    println!("{:?}", t0.elapsed());
}
