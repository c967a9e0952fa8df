//! `baton-nms`: the network management server.

fn main() {
    if let Err(e) = baton_nms::cli::main_from(std::env::args_os()) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
