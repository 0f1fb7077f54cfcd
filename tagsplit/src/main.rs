//! The `tagsplit` command line.

fn main() {
    println!("tagsplit: under construction");
}
