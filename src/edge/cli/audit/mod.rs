//! `meshroot audit …`: query, follow, export, verify and prove the issuance log, on a store
//! directory (the server stopped) or through a running server's audit API (`--addr`).
//!
//! Without `--addr` or `--store` the config's store is read; if a running server holds it, the
//! config's admin address is asked instead.

use super::failure::Failure;
mod args;
mod list;
mod output;
mod partners;
mod prove;
mod source;
mod stats;
mod verify;

pub use self::args::*;
use self::list::*;
use self::prove::*;
pub(crate) use self::source::*;
use self::stats::*;
use self::verify::*;

/// Runs an audit command.
pub async fn run(command: AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::List(args) => list(args).await,
        AuditCommand::Show(args) => show(args).await,
        AuditCommand::Watch(args) => watch(args).await,
        AuditCommand::Export(args) => export(args).await,
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Prove(args) => prove(args).await,
        AuditCommand::CheckProof(args) => check_proof(args),
        AuditCommand::Stats(args) => stats(args).await,
        AuditCommand::Partners(args) => partners::partners(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::output::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
    }
}
