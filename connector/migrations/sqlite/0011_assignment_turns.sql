-- The round-robin position of each binding's lead assignment, shared by all its connectors.
CREATE TABLE assignment_turns (
    binding TEXT PRIMARY KEY,
    next_turn BIGINT NOT NULL
);
