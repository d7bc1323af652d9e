"""The domain: plain async functions and small classes, no Quart and no
headers. What changes data takes the Database (and the store) and runs its
own write transactions (users.create_user, which joins its caller's, says
why it is the exception); what only reads takes the session to read with (a
request's, so one request sees one snapshot). Both return models or raise
errors.DomainError."""
