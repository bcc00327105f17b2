//! Prints the thread table of docs/HARDENING.md (`cargo run -p sandbox --example thread_table`).
fn main() {
    print!("{}", sandbox::thread_table());
}
