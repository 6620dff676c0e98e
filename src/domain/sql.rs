//! Domain enums read from the database as typed values: each is stored as
//! TEXT (its `as_str` name) and decoded through its `FromStr`, on SQLite and
//! Postgres alike, so no caller compares stored words as strings. A word
//! that does not parse is a decode error naming it.

/// Implements `sqlx::Type` and `sqlx::Decode` for a domain enum stored as
/// TEXT, on every backend whose `&str` decodes.
macro_rules! stored_as_text {
    ($ty:ty) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&'r str as sqlx::Decode<'r, DB>>::decode(value)?;
                text.parse::<$ty>().map_err(Into::into)
            }
        }
    };
}

stored_as_text!(super::DeliveryStatus);
stored_as_text!(super::Channel);
stored_as_text!(super::DeliveryKind);
stored_as_text!(super::attempt::Outcome);
