//! `baton-node`: the agent on every machine.

fn main() {
    if let Err(e) = baton_node::cli::main_from(std::env::args_os()) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
