-- Imports now record a cheaper digest of a batch's content (store::import):
-- PostgreSQL's 64-bit hash of the content's values, 16 hex digits, instead
-- of the md5 of its text, 32. The records earlier imports wrote keep theirs,
-- and an import tells the two apart by length; nothing is rewritten.
COMMENT ON COLUMN batch_imports.content_digest IS
    'A digest of the batch''s content as imported: 16 hex digits of hash_record_extended of the content row, or, from imports before V15, 32 of md5 of its text';
