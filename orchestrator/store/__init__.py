"""The database functions: one module per group of tables, each taking a Session (see db.Database.run)."""
