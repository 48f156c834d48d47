//! The `event-binder` binary: the command line with no handlers of a service known.

use std::process::ExitCode;

fn main() -> ExitCode {
    event_binder_cli::Tool::new().main()
}
