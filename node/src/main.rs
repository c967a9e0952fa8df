//! `baton-node`: the agent on every machine.

fn main() {
    if let Err(e) = baton_node::cli::main_agent(std::env::args_os().collect()) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
