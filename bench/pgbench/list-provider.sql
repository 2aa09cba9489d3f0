-- ListBatches' first page of one provider's batches, newest first.
SELECT batch_id, state, provider, model, current_model, topic_filter, difficulty_filter, reasoning_instruction, target_count, samples_generated, total_tokens, errors, error_count, model_switches, metadata, start_time, end_time, update_time, version FROM batches
WHERE true AND provider = ('groq')
ORDER BY start_time DESC, batch_id DESC LIMIT 51;
