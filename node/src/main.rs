//! `baton-node`: the agent on every machine.

fn main() -> anyhow::Result<()> {
    baton_node::cli::main_from(std::env::args_os())
}
