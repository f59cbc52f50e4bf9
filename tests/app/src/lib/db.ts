// Stub of the app's `@/lib/db`: its PrismaClient, here on the Rust-free query compiler with the
// pg driver adapter (prisma/schema.prisma says why). DATABASE_URL is the test's database.
import { PrismaClient } from '@prisma/client';
import { PrismaPg } from '@prisma/adapter-pg';

// Prisma's default pool for the app is 10 connections (its README); pg's Pool default is 10 too.
export const db = new PrismaClient({ adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL, max: 10 }) });
