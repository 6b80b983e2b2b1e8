"""Server-rendered pages; for now the home page that lists the deployed processes."""
from __future__ import annotations

from flask import Blueprint, render_template

from engine import worklist

from .auth import database

pages = Blueprint("pages", __name__)


@pages.get("/")
def home():
    return render_template("home.html", processes=worklist.list_processes(database()))
