"""The dashboard's `BatchHistory` model (`backend/models/batch.py`) in
SQLAlchemy, column for column, to make its table exactly as the dashboard's
`db.create_all()` makes it, and to read it as the dashboard's own ORM does
(the migration plan's baseline in bench/legacy_history.py).

Needs SQLAlchemy, and psycopg2 for PostgreSQL.
"""
import json

from sqlalchemy import Column, Integer, String, Text, create_engine
from sqlalchemy.orm import declarative_base

Base = declarative_base()


class BatchHistory(Base):
    __tablename__ = "batch_history"

    id = Column(Integer, primary_key=True)
    batch_id = Column(String(100), unique=True, nullable=False, index=True)
    started_at = Column(String(50), nullable=False)
    completed_at = Column(String(50))
    model = Column(String(100))
    topic_filter = Column(String(200))
    difficulty_filter = Column(String(50))
    reasoning_instruction = Column(Text)
    target_count = Column(Integer)
    samples_generated = Column(Integer, default=0)
    total_tokens = Column(Integer, default=0)
    status = Column(String(20))
    errors = Column(Text)
    model_switches = Column(Text)

    def to_dict(self):
        return {
            "id": self.batch_id, "started_at": self.started_at,
            "completed_at": self.completed_at, "model": self.model,
            "topic_filter": self.topic_filter, "difficulty_filter": self.difficulty_filter,
            "reasoning_instruction": self.reasoning_instruction, "target": self.target_count,
            "samples_generated": self.samples_generated, "tokens_used": self.total_tokens,
            "status": self.status,
            "errors": json.loads(self.errors) if self.errors else [],
            "model_switches": json.loads(self.model_switches) if self.model_switches else [],
        }


def engine(url):
    """An engine for a postgres:// or postgresql:// URL, through psycopg2."""
    return create_engine(url.replace("postgres://", "postgresql+psycopg2://", 1)
                         .replace("postgresql://", "postgresql+psycopg2://", 1))


def create_all(url):
    """The table and its indexes, as `db.create_all()` makes them."""
    made = engine(url)
    Base.metadata.create_all(made)
    made.dispose()
