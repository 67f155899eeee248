//! The statements the embedded cluster's set-up needs (a database to create, a liveness
//! probe), kept here so that `store` stays the only module that writes SQL.

/// Creates `dbname` unless it exists. The name must be lower-case letters, digits and `_`
/// (it is spliced into `CREATE DATABASE`, which takes no parameters).
pub async fn ensure_database(client: &tokio_postgres::Client, dbname: &str) -> Result<(), String> {
    if dbname.is_empty()
        || !dbname
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!("unusable database name {dbname:?}"));
    }
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
        .await
        .map_err(|e| e.to_string())?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE \"{dbname}\""))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether the server answers a query (the empty one: no parse, no plan).
pub async fn answers(client: &tokio_postgres::Client) -> bool {
    client.simple_query("").await.is_ok()
}
