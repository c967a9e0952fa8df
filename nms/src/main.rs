//! `baton-nms`: the network management server.

fn main() -> anyhow::Result<()> {
    baton_nms::cli::main_from(std::env::args_os())
}
