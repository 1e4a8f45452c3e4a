"""Referral and affiliate tracking service."""
