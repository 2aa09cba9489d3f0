-- jsonb_append_keep_newest without copying the items through temporary
-- storage: V5's version expanded the list with jsonb_array_elements (whose
-- rows are materialized) and ranked the items in a window sorted by
-- position, carrying every item (up to 64 KiB each) through both, so a big
-- report spilled megabytes to temporary files. The kept items are always
-- the newest ones, a suffix of the list: only positions and sizes are
-- ranked, and the suffix is cut from the list as it is.
CREATE OR REPLACE FUNCTION jsonb_append_keep_newest(items jsonb, additions jsonb, max_items integer, max_bytes integer)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_array_length(combined) <= max_items AND pg_column_size(combined) <= max_bytes
            THEN combined
        ELSE (
            SELECT CASE
                WHEN min(position) IS NULL THEN '[]'::jsonb
                ELSE jsonb_path_query_array(
                    combined, format('$[%s to last]', min(position) - 1)::jsonpath)
            END
            FROM (
                SELECT position,
                       row_number() OVER newest AS rank,
                       sum(size) OVER newest AS bytes
                FROM (
                    -- An item taken out has a 4-byte header; V5 measured
                    -- items stored with the 1-byte header of short values
                    -- (up to 127 bytes), and the limits keep that meaning.
                    SELECT position,
                           CASE WHEN taken <= 130 THEN taken - 3 ELSE taken END AS size
                    FROM generate_series(1, jsonb_array_length(combined)) AS position,
                         LATERAL pg_column_size(combined -> (position - 1)) AS taken
                ) sizes
                WINDOW newest AS (ORDER BY position DESC)
            ) ranked
            WHERE rank <= max_items AND bytes <= max_bytes
        )
    END
    FROM (SELECT items || additions) AS appended(combined)
$$;
