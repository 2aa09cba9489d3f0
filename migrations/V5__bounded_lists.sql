-- Appends to a JSON array and keeps only its newest elements, at most
-- max_items of them and at most max_bytes in all (as stored), so that a
-- batch always fits in one gRPC message. Measuring is skipped while the
-- whole array is within both bounds, as it nearly always is.
CREATE FUNCTION jsonb_append_keep_newest(items jsonb, additions jsonb, max_items integer, max_bytes integer)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_array_length(combined) <= max_items AND pg_column_size(combined) <= max_bytes
            THEN combined
        ELSE (
            SELECT coalesce(jsonb_agg(item ORDER BY position), '[]'::jsonb)
            FROM (
                SELECT item, position,
                       row_number() OVER newest AS rank,
                       sum(pg_column_size(item)) OVER newest AS bytes
                FROM jsonb_array_elements(combined) WITH ORDINALITY AS listed(item, position)
                WINDOW newest AS (ORDER BY position DESC)
            ) ranked
            WHERE rank <= max_items AND bytes <= max_bytes
        )
    END
    FROM (SELECT items || additions) AS appended(combined)
$$;
