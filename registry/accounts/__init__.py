"""Who may do what: principals and the role table, tokens, organisations, users, page sessions, the audit log."""
