"""The registry: connection, job documents, the job store (the one writer), journal and gates."""
