//! The calling service's contract on the command line: `tuma openapi` and
//! `tuma deliveries cancel`.

use chrono::Utc;

use crate::replay::os_user;
use crate::store::{Canceled, Db};

/// `tuma openapi`: the document `GET /openapi.json` serves, so clients can
/// generate types without a running server.
pub(super) fn print_openapi() {
    println!("{}", crate::api::openapi::document_text());
}

/// `tuma deliveries cancel ID`: a pending delivery becomes `canceled`.
pub(super) async fn cancel(db: &Db, id: &str) -> anyhow::Result<()> {
    let by = format!("user {}", os_user());
    match db.cancel_delivery(id, &by, Utc::now()).await? {
        Canceled::Done => {
            println!("canceled {id}");
            Ok(())
        }
        Canceled::TooLate(status) => anyhow::bail!(
            "delivery {id} is {status}: only one no provider has had yet (pending) can be canceled"
        ),
        Canceled::NotFound => {
            anyhow::bail!("no delivery has id {id}; `tuma deliveries list` shows recent ones")
        }
    }
}
